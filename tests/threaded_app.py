"""An aiohttp application served on 127.0.0.1 from its own thread and event loop.

The base of the tests' real servers (``FakeUpstream``, ``OTLPReceiver``): a subclass builds
its ``web.Application`` in ``make_app`` and handles requests on the server's loop; tests
call ``start``/``stop`` and read ``url`` from their own thread.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from typing import Self

from aiohttp import web


class ThreadedApp(ABC):
    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @abstractmethod
    def make_app(self) -> web.Application:
        """The server's routes; called once, on the server's loop."""

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.make_app(), access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        # Close open connections and their handler tasks before the loop goes away.
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()
