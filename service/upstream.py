"""The pooled keep-alive HTTP client that talks to upstreams, and its error boundary.

aiohttp was chosen over httpx by measurement (``bench/client_choice.py``; figures in the
README). One ``UpstreamClient`` per process, created inside the running event loop at
startup and closed at shutdown; not thread-safe (event-loop only).

The client is transparent: it adds no default headers of its own (no User-Agent, Accept,
Accept-Encoding or Content-Type the caller did not send) and never decompresses, so response
bytes reach the caller exactly as the upstream sent them. aiohttp and OS errors are
translated here into ``UpstreamUnreachable`` / ``UpstreamTimeout``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from yarl import URL

from service.config import UpstreamConfig
from service.errors import UpstreamTimeout, UpstreamUnreachable

_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UpstreamTarget:
    """An upstream's fixed scheme, host, port and base path: nothing a request can change."""

    __slots__ = ("base_path", "host", "name", "port", "scheme", "timeout")

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        url = URL(config.url)
        self.name = name
        self.scheme = url.scheme
        self.host = url.raw_host or ""
        self.port = url.port
        self.base_path = url.raw_path.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout_s,
                                             sock_read=config.timeout_s)

    def url(self, raw_path: str, raw_query: str) -> URL:
        """Join the caller's (already checked, still-encoded) path onto the base path.

        Built from parts, so no path or query can move the request to another host.
        """
        return URL.build(scheme=self.scheme, host=self.host, port=self.port,
                         path=self.base_path + raw_path, query_string=raw_query, encoded=True)


class UpstreamClient:
    """Owns the connection pool. ``open`` yields the response with its headers read."""

    def __init__(self, pool_size: int = 0) -> None:
        connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=0, ttl_dns_cache=300,
                                         keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None))

    @asynccontextmanager
    async def open(self, target: UpstreamTarget, method: str, url: URL,
                   headers: list[tuple[str, str]], body: bytes | None,
                   ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            response = await self._session.request(
                method, url, headers=headers, data=body, allow_redirects=False,
                timeout=target.timeout, compress=None, chunked=None)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {target.name!r} did not answer in time") from None
        except (aiohttp.ClientError, OSError) as error:
            raise UpstreamUnreachable(
                f"upstream {target.name!r} is unreachable ({type(error).__name__})") from None
        try:
            yield response
        finally:
            response.release()

    async def close(self) -> None:
        await self._session.close()


async def read_body(response: aiohttp.ClientResponse, target: UpstreamTarget) -> bytes:
    """The whole response body, with library errors translated."""
    try:
        return await response.read()
    except TimeoutError:
        raise UpstreamTimeout(f"upstream {target.name!r} stopped sending in time") from None
    except (aiohttp.ClientError, OSError) as error:
        raise UpstreamUnreachable(
            f"upstream {target.name!r} broke off the response ({type(error).__name__})") from None


async def iter_body(response: aiohttp.ClientResponse, target: UpstreamTarget,
                    ) -> AsyncIterator[bytes]:
    """Body chunks as they arrive (no re-chunking), with library errors translated."""
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except TimeoutError:
        raise UpstreamTimeout(f"upstream {target.name!r} stopped sending in time") from None
    except (aiohttp.ClientError, OSError) as error:
        raise UpstreamUnreachable(
            f"upstream {target.name!r} broke off the response ({type(error).__name__})") from None
