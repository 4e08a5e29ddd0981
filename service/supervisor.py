"""``spendgate serve --workers N``: N proxy processes on one port, one supervisor.

The supervisor binds the listening socket, then forks N workers that all accept on it (the
kernel hands each new connection to one of them). Each worker builds its own
``app.Spendgate`` (its own event loop, record pipeline, ledger and spend journal slot) and
serves until told to stop; they share the budget store (the SQLite file, or Redis), so
budgets hold across them as across replicas. ``exporters.host_metrics`` makes ``/metrics``
of any worker exact for the host.

Signals to the supervisor: SIGTERM or SIGINT is passed to every worker, which drains
(``hotpath.server.DrainingServer``: ``/readyz`` 503, calls in flight finish, records
flushed, reservations settled) and exits; the supervisor exits once all have. SIGHUP is
passed on: every worker reloads its config. A worker that dies on its own is started again
after ``RESTART_DELAY_S``; one that fails at start (exit status 1 in its first
``EARLY_S``: a bad config) stops them all, and ``serve`` exits 1.

Forking happens before the supervisor starts any thread or event loop: nothing but the
socket and the loaded config is shared. Linux and macOS only (``os.fork``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger("spendgate.supervisor")
RESTART_DELAY_S = 1.0
EARLY_S = 10.0

# (listening socket, worker index, every worker's metrics socket path) -> exit status
Worker = Callable[[socket.socket, int, Sequence[str]], int]


def listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_workers(count: int, sock: socket.socket, run_worker: Worker) -> int:
    """Run ``count`` workers on ``sock`` until SIGTERM/SIGINT; their exit status."""
    folder = tempfile.mkdtemp(prefix="spendgate-w")
    paths = [os.path.join(folder, f"{i}.sock") for i in range(count)]
    children: dict[int, int] = {}       # pid -> worker index
    started: dict[int, float] = {}      # worker index -> when it was last started
    stopping = False
    failed = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: its own signal handling, its own everything
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app handles it (reload)
            status = 1
            try:
                status = run_worker(sock, index, paths)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(status)
        children[pid] = index
        started[index] = time.monotonic()

    def forward(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            sig = signal.SIGTERM
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        for index in range(count):
            spawn(index)
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            index = children.pop(pid)
            if stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == 1 and time.monotonic() - started[index] < EARLY_S:
                log.error("worker %d failed at start: stopping", index)
                failed = True
                forward(signal.SIGTERM, None)
                continue
            log.error("worker %d (pid %d) exited (%d): starting it again", index, pid, code)
            time.sleep(RESTART_DELAY_S)
            if not stopping:
                spawn(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0
