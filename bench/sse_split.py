"""SSE splitter speed: events/s of ``service/providers/sse.py`` on realistic provider streams,
optionally side by side with another version of that file in the same run.

    python bench/sse_split.py                                   # this tree only
    git show REV:service/providers/sse.py > /tmp/sse-REV.py
    python bench/sse_split.py --baseline /tmp/sse-REV.py        # A/B, interleaved rounds

Streams are built from the literal transcripts in ``tests/fixtures`` (an OpenAI chat stream
of ``--events`` content deltas; an Anthropic Messages stream of as many), fed the way the
proxy sees them: one event per read (a provider writes each event on its own), or reads of
16 KiB (events that arrived together). Each round feeds every splitter the same streams, in
alternating order; the report gives the median of the rounds. ``sse.py`` imports nothing of
spendgate, so a version is loaded straight from its file.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def events_of(name: str) -> list[bytes]:
    return [e + b"\n\n" for e in (FIXTURES / name).read_bytes().split(b"\n\n") if e.strip()]


def openai_stream(deltas: int) -> list[bytes]:
    """First chunk, ``deltas`` content chunks, the finish, usage and [DONE] chunks."""
    events = events_of("openai_chat_stream.sse")
    first, content, rest = events[0], events[1:-3], events[-3:]
    body = [content[i % len(content)] for i in range(deltas)]
    return [first, *body, *rest]


def anthropic_stream(deltas: int) -> list[bytes]:
    events = events_of("anthropic_messages_stream_cached.sse")
    deltas_of = [e for e in events if b"content_block_delta" in e]
    head = events[:events.index(deltas_of[0])]
    tail = events[events.index(deltas_of[-1]) + 1:]
    return [*head, *(deltas_of[i % len(deltas_of)] for i in range(deltas)), *tail]


def reads(events: list[bytes], size: int | None) -> list[bytes]:
    """One read per event (``size`` None), or the stream cut into reads of ``size`` bytes."""
    if size is None:
        return events
    data = b"".join(events)
    return [data[i:i + size] for i in range(0, len(data), size)]


def feed_all(make: Callable[[], Any], chunks: list[bytes]) -> int:
    splitter = make()
    n = 0
    for chunk in chunks:
        n += len(splitter.feed(chunk))
    splitter.flush()
    return n


def measure(make: Callable[[], Any], chunks: list[bytes], repeat: int) -> float:
    """Events per second, best of ``repeat`` passes over the stream."""
    best = float("inf")
    count = 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = feed_all(make, chunks)
        best = min(best, time.perf_counter() - started)
    return count / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another sse.py to compare with")
    parser.add_argument("--events", type=int, default=2000, help="content events per stream")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5, help="passes per measurement")
    args = parser.parse_args()

    versions = {"this tree": load(ROOT / "service" / "providers" / "sse.py", "sse_this")}
    if args.baseline is not None:
        versions["baseline"] = load(args.baseline, "sse_baseline")
    scenarios = {
        "openai, one event per read": reads(openai_stream(args.events), None),
        "openai, 16 KiB reads": reads(openai_stream(args.events), 16384),
        "anthropic, one event per read": reads(anthropic_stream(args.events), None),
        "anthropic, 16 KiB reads": reads(anthropic_stream(args.events), 16384),
        "openai CRLF, 16 KiB reads": reads([e.replace(b"\n", b"\r\n")
                                            for e in openai_stream(args.events)], 16384),
    }
    results: dict[tuple[str, str], list[float]] = {}
    names = list(versions)
    for round_ in range(args.rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        for scenario, chunks in scenarios.items():
            for name in order:
                rate = measure(versions[name].SSESplitter, chunks, args.repeat)
                results.setdefault((scenario, name), []).append(rate)
    width = max(map(len, scenarios))
    print(f"{'scenario':<{width}}  " + "  ".join(f"{n:>14}" for n in names)
          + ("  after/before" if len(names) > 1 else ""))
    for scenario in scenarios:
        rates = [statistics.median(results[(scenario, n)]) for n in names]
        line = f"{scenario:<{width}}  " + "  ".join(f"{r:>10,.0f} ev/s" for r in rates)
        if len(rates) > 1:
            line += f"  {rates[0] / rates[1]:>12.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
