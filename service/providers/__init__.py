"""Wire protocols, one module each, named in the ``PROVIDERS`` table.

``provider`` in an upstream's config is a key of this table: ``openai`` covers OpenAI, Azure
OpenAI, vLLM, Ollama, TGI, llama.cpp and every other OpenAI-compatible server; ``anthropic``
covers the Anthropic Messages API. Beside the protocols: ``base.py`` (the ``Provider`` and
``StreamTracker`` protocols every one implements), ``sse.py`` (server-sent events split on
complete events only) and ``jsonread.py`` (never-raising readers of untrusted JSON).
May import: ``usage`` and nothing else of spendgate; protocols never do I/O.
"""

from __future__ import annotations

from spendgate.providers.anthropic import AnthropicProvider
from spendgate.providers.base import Provider, RequestInfo, ResponseSummary, StreamTracker
from spendgate.providers.openai import OpenAIProvider

PROVIDERS: dict[str, Provider] = {
    "openai": OpenAIProvider(),
    "anthropic": AnthropicProvider(),
}

__all__ = ["PROVIDERS", "Provider", "RequestInfo", "ResponseSummary", "StreamTracker"]
