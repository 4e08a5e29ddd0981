"""The ``spendgate`` command: ``serve``, ``check-config``, ``prices``.

Exit codes: 0 success; 1 a problem the user can fix (bad config, unknown model); 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from service import __version__
from service.config import Config, load_config
from service.errors import ConfigError

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
    import uvicorn
    from prometheus_client import disable_created_metrics

    from service.app import Spendgate

    config = _load_or_exit(_config_path(args.config))
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the scrape size for no use here
    app = Spendgate(config)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"spendgate {__version__} on http://{host}:{port} "
          f"(upstreams: {', '.join(sorted(config.upstreams))})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
                access_log=False, log_level=args.log_level, server_header=False,
                proxy_headers=False,
                date_header=False, timeout_graceful_shutdown=30)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
        from service.app import build_catalog

        build_catalog(config)
    except ConfigError as error:
        for problem in error.problems:
            print(problem)
        return 1
    except (OSError, ValueError) as error:
        print(f"pricing.catalog: {error}")
        return 1
    print(f"{args.file}: ok ({len(config.upstreams)} upstreams)")
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    from service.app import build_catalog
    from service.pricing import describe_price, price_table

    catalog = build_catalog(_load_or_exit(_config_path(args.config)))
    if args.model is None:
        print(price_table(catalog))
        return 0
    if catalog.resolve(args.model, upstream=args.upstream) is None:
        print(describe_price(catalog, args.model, upstream=args.upstream), file=sys.stderr)
        return 1
    print(describe_price(catalog, args.model, upstream=args.upstream))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spendgate", description="LLM cost and latency proxy")
    parser.add_argument("--version", action="version", version=f"spendgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML config file (default: $SPENDGATE_CONFIG, "
                       "else the embedded default: upstreams openai and anthropic)")
    serve.add_argument("--host", default=None, help=f"bind address (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=None, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    prices = sub.add_parser("prices", help="the resolved price of a model, or the catalog")
    prices.add_argument("model", nargs="?")
    prices.add_argument("--upstream", help="resolve as a call through this upstream")
    prices.add_argument("--config", help="config whose overrides and catalog apply")
    prices.set_defaults(func=cmd_prices)
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
