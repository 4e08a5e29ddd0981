"""What of a URL may be shown in a log line, a readiness message or a status page."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment: ``redis://:pw@h:6379/0?x`` ->
    ``redis://h:6379/0``. A URL without a host (``unix:///run/redis.sock``) keeps its path."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url
    if "," in parts.netloc:  # several nodes (redis+sentinel://, redis+cluster://)
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
