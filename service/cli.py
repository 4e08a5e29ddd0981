"""The ``spendgate`` command: ``serve``, ``check-config``, ``prices``, ``budgets``, ``spend``,
``reconcile``, ``demo``, ``simulate``.

Exit codes: 0 success; 1 a problem the user can fix (bad config, unknown model); 2 usage;
3 ``reconcile`` found a day past ``reconcile.drift_warn_ratio``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Sequence
from functools import partial

from spendgate import __version__
from spendgate.config import (
    ALLOWED_HOSTS_ENV,
    Config,
    allowed_hosts,
    load_config,
    load_config_leniently,
    related,
)
from spendgate.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000


def _config_path(arg: str | None) -> str | None:
    return arg or os.environ.get("SPENDGATE_CONFIG") or None


def _load_or_exit(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load_or_exit(_config_path(args.config))
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    workers = args.workers if args.workers is not None else config.server.workers
    try:
        # --host counts: the loopback default does not follow the proxy off loopback.
        hosts = allowed_hosts(config.server, host, os.environ.get(ALLOWED_HOSTS_ENV))
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"spendgate {__version__} on http://{host}:{port} "
          f"(upstreams: {', '.join(sorted(config.upstreams))}"
          f"{f'; {workers} workers' if workers > 1 else ''})", file=sys.stderr, flush=True)
    if workers > 1:
        from spendgate.supervisor import listen, serve_workers

        return serve_workers(workers, listen(host, port), lambda sock, index, paths: _serve(
            args, config, host, port, hosts, sock, (index, paths)))
    return _serve(args, config, host, port, hosts)


def _serve(args: argparse.Namespace, config: Config, host: str, port: int, hosts: list[str],
           sock: socket.socket | None = None,
           worker: tuple[int, Sequence[str]] | None = None) -> int:
    """One proxy process, on ``host:port`` or on ``sock`` (a worker of ``--workers``)."""
    import uvicorn
    from prometheus_client import disable_created_metrics

    from spendgate.app import Spendgate
    from spendgate.hotpath.server import DrainingServer, HeadLimits, protocol_class

    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the scrape size for no use here
    try:
        app = Spendgate(config, config_path=_config_path(args.config), allowed_hosts=hosts,
                        worker=worker)
    except ConfigError as error:  # telemetry settings, usage log path, store
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    if app.proxy.propagate:
        # Span export runs in SDK threads beside the event loop; with CPython's default 5 ms
        # switch interval a batch being encoded can hold the GIL that long while a call
        # waits (measured: p99 at c=1 8.8 -> 4.4 ms). Without tracing the shorter interval
        # only adds thread switches (measured: +0.12 ms p50), so it is set only here.
        sys.setswitchinterval(0.001)
    # uvicorn's httptools protocol, with request heads bounded (hotpath/server.py).
    http = protocol_class(HeadLimits.from_config(config.server))
    server = uvicorn.Config(app, host=host, port=port, loop="uvloop", http=http, lifespan="on",
                            access_log=False, log_level=args.log_level, server_header=False,
                            proxy_headers=False, date_header=False,
                            timeout_graceful_shutdown=math.ceil(config.server.drain_s))
    # SIGTERM: /readyz 503 at once, then stop accepting and let calls finish (drain_s).
    DrainingServer(server, app.start_draining, config.server.shutdown_delay_s).run(
        sockets=[sock] if sock is not None else None)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    # The checks below run on what parsed even when the schema found problems (one pass).
    config, found = load_config_leniently(args.file)
    if config is None:
        for problem in found:
            print(problem)
        return 1
    from prometheus_client import CollectorRegistry

    from spendgate.accounting.gpu import GpuCosts
    from spendgate.accounting.pricing import PriceCatalog
    from spendgate.app import build_catalog
    from spendgate.telemetry import check_telemetry
    from spendgate.upstream.credentials import signer_for

    # Every check, each reported: one pass shows every problem.
    problems: list[str] = []
    catalogs: list[PriceCatalog] = []  # the catalog, once built: gpu.compare_to is checked in it
    checks: list[Callable[[], object]] = [
        lambda: catalogs.append(build_catalog(config)), lambda: check_telemetry(config),
        lambda: allowed_hosts(config.server, fallback=os.environ.get(ALLOWED_HOSTS_ENV)),
        lambda: [GpuCosts.build(config, catalog, CollectorRegistry()) for catalog in catalogs]]
    # Each upstream's extras installed and credentials found.
    checks += [partial(signer_for, name, upstream)
               for name, upstream in config.upstreams.items()]
    for check in checks:
        try:
            check()
        except ConfigError as error:
            problems += error.problems
        except (OSError, ValueError) as error:
            problems.append(f"pricing.catalog: {error}")
    problems = found + [p for p in problems if not related(p, found)]
    for problem in problems:
        print(problem)
    if problems:
        return 1
    for warning in config.key_warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.file}: ok ({len(config.upstreams)} upstreams)")
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    from spendgate.accounting.describe import describe_price, matching_models, price_table
    from spendgate.app import build_catalog

    catalog = build_catalog(_load_or_exit(_config_path(args.config)))
    if args.model is None:
        print(price_table(catalog))
        return 0
    names = matching_models(catalog, args.model)  # a glob ('gpt-5*') gives every match
    if not names or catalog.resolve(names[0], upstream=args.upstream) is None:
        print(describe_price(catalog, args.model, upstream=args.upstream), file=sys.stderr)
        return 1
    print("\n".join(describe_price(catalog, name, upstream=args.upstream) for name in names))
    return 0


def cmd_budgets(args: argparse.Namespace) -> int:
    from spendgate.admin.client import budgets_table, fetch_budgets

    try:
        data = fetch_budgets(args.url, args.admin_key or os.environ.get("SPENDGATE_ADMIN_KEY"))
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    print(budgets_table(data), end="")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from spendgate.reconcile.command import main as reconcile

    return reconcile(_load_or_exit(_config_path(args.config)), args.days, args.format)


def cmd_spend(args: argparse.Namespace) -> int:
    import json

    from spendgate.admin.client import fetch_spend, spend_table

    key = args.admin_key or os.environ.get("SPENDGATE_ADMIN_KEY")
    try:
        data = fetch_spend(args.url, key, args.by, args.window,
                           "csv" if args.format == "csv" else "json")
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    if args.format == "csv":
        sys.stdout.write(data.decode())
    elif args.format == "json":
        print(json.dumps(json.loads(data), indent=2))
    else:
        print(spend_table(json.loads(data)), end="")
    return 0


def _groups(value: str) -> str:
    """``--by``: the names the proxy groups by; which ``tag:KEY`` it accounts, and with
    what a tag combines, the proxy checks (its 400 names the problem)."""
    from spendgate.tags import key_problem

    groups = [g.strip() for g in value.split(",") if g.strip()]
    if not groups or any(g not in ("project", "model", "upstream", "key")
                         and not (g.startswith("tag:") and key_problem(g[4:]) is None)
                         for g in groups):
        raise argparse.ArgumentTypeError(f"comma-separated project, model, upstream, key, "
                                         f"tag:KEY: {value!r}")
    return ",".join(groups)


def cmd_demo(args: argparse.Namespace) -> int:
    from spendgate.demo.runner import DemoOptions
    from spendgate.demo.runner import main as run_demo

    return run_demo(DemoOptions(port=args.port, duration=args.duration, rate=args.rate,
                                seed=args.seed, error_rate=args.error_rate,
                                traffic_only=args.traffic_only, proxy_url=args.proxy_url))


def cmd_simulate(args: argparse.Namespace) -> int:
    from spendgate.demo.simulator.server import run

    run(args.host, args.port, seed=args.seed, error_rate=args.error_rate, speed=args.speed)
    return 0


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {value}")
    return number


def _reader(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of a command that reads a running proxy."""
    parser.add_argument("--url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
                        help="the proxy (default http://127.0.0.1:4000)")
    parser.add_argument("--admin-key", default=None,
                        help="the proxy's admin_key (default: $SPENDGATE_ADMIN_KEY; without "
                        "one, a local proxy with no admin_key is read through its console)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spendgate", description="LLM cost and latency proxy")
    parser.add_argument("--version", action="version", version=f"spendgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML config file (default: $SPENDGATE_CONFIG, "
                       "else the embedded default: upstreams openai and anthropic)")
    serve.add_argument("--host", default=None, help=f"bind address (default {DEFAULT_HOST}; "
                       "off loopback, server.allowed_hosts or $SPENDGATE_ALLOWED_HOSTS must "
                       "name the Host names served)")
    serve.add_argument("--port", type=int, default=None, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes serving the port (default: server.workers, 1)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    prices = sub.add_parser("prices", help="the resolved price of a model, or the catalog")
    prices.add_argument("model", nargs="?", help="a model name, or a glob: 'gpt-5*'")
    prices.add_argument("--upstream", help="resolve as a call through this upstream")
    prices.add_argument("--config", help="config whose overrides and catalog apply")
    prices.set_defaults(func=cmd_prices)

    budgets = _reader(sub.add_parser("budgets",
                                     help="spend against every budget of a running proxy"))
    budgets.set_defaults(func=cmd_budgets)

    reconcile = sub.add_parser("reconcile", help="the ledger against the providers' own usage "
                               "and cost APIs (upstreams.NAME.admin_key)")
    reconcile.add_argument("--config", help="YAML config file (default: $SPENDGATE_CONFIG)")
    reconcile.add_argument("--days", type=int, choices=range(1, 32), metavar="N", default=None,
                           help="complete UTC days before today (default "
                                "reconcile.lookback_days)")
    reconcile.add_argument("--format", choices=["table", "json"], default="table")
    reconcile.set_defaults(func=cmd_reconcile)


    spend = _reader(sub.add_parser("spend", help="spend of a running proxy, grouped"))
    spend.add_argument("--by", type=_groups, default="project",
                       help="comma-separated: project, model, upstream, key (default "
                       "project); or tag:KEY (a key of attribution.tag_keys), alone or with "
                       "upstream, model")
    spend.add_argument("--window", choices=["day", "week", "month", "total"], default="day",
                       help="the current UTC day (default), week, month, or all time")
    spend.add_argument("--format", choices=["table", "csv", "json"], default="table")
    spend.set_defaults(func=cmd_spend)

    demo = sub.add_parser("demo", help="simulated provider + proxy + traffic, with a live "
                          "summary: no API key, no network")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT,
                      help=f"the proxy's port on 127.0.0.1 (default {DEFAULT_PORT}; 0: any)")
    demo.add_argument("--duration", type=_positive, default=None, metavar="SECONDS",
                      help="stop after this long (default: until Ctrl-C)")
    demo.add_argument("--rate", type=_positive, default=5.0, metavar="RPS",
                      help="calls per second, Poisson arrivals (default 5)")
    demo.add_argument("--seed", type=int, default=None, help="repeatable traffic and answers")
    demo.add_argument("--error-rate", type=_fraction, default=0.03,
                      help="share of simulated calls that fail (default 0.03)")
    demo.add_argument("--traffic-only", action="store_true",
                      help="only send traffic to a running proxy (--proxy-url)")
    demo.add_argument("--proxy-url", default=None,
                      help="with --traffic-only: the proxy (default http://127.0.0.1:PORT)")
    demo.set_defaults(func=cmd_demo)

    simulate = sub.add_parser("simulate", help="serve the simulated OpenAI + Anthropic "
                              "provider the demo uses")
    simulate.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}")
    simulate.add_argument("--port", type=int, default=8000, help="default 8000")
    simulate.add_argument("--seed", type=int, default=None, help="repeatable answers")
    simulate.add_argument("--error-rate", type=_fraction, default=0.03,
                          help="share of calls that fail (default 0.03)")
    simulate.add_argument("--speed", type=_positive, default=1.0,
                          help="divide every simulated delay by this (default 1)")
    simulate.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:  # `spendgate prices | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    return result


if __name__ == "__main__":
    raise SystemExit(main())
