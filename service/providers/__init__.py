"""Wire protocols, one module each, named in the ``PROVIDERS`` table.

``provider`` in an upstream's config is a key of this table: ``openai`` covers OpenAI, Azure
OpenAI, vLLM, Ollama, TGI, llama.cpp and every other OpenAI-compatible server; ``anthropic``
covers the Anthropic Messages API.
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
