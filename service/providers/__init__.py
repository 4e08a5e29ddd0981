"""Wire protocols, one module each, named in the ``PROVIDERS`` table.

``provider`` in an upstream's config is a key of this table: ``openai`` covers OpenAI, Azure
OpenAI, vLLM, Ollama, TGI, llama.cpp and every other OpenAI-compatible server; ``anthropic``
covers the Anthropic Messages API; ``gemini`` the Gemini API (Google AI Studio and Vertex AI,
whose Anthropic models it reads with the Anthropic reader); ``bedrock`` AWS Bedrock Runtime.
Beside the protocols: ``base.py`` (the ``Provider``, ``StreamTracker`` and ``StreamSplitter``
protocols), ``sse.py`` (server-sent events split on complete events only), ``jsonread.py``
(never-raising readers of untrusted JSON), ``jsonarray.py`` (a streamed JSON array, element
by element) and ``eventstream.py`` (AWS event-stream binary frames).
May import: ``usage`` and nothing else of spendgate; protocols never do I/O.
"""

from __future__ import annotations

from spendgate.providers.anthropic import AnthropicProvider
from spendgate.providers.base import Provider, RequestInfo, ResponseSummary, StreamTracker
from spendgate.providers.bedrock import BedrockProvider
from spendgate.providers.gemini import GeminiProvider
from spendgate.providers.openai import OpenAIProvider

PROVIDERS: dict[str, Provider] = {
    "openai": OpenAIProvider(),
    "anthropic": AnthropicProvider(),
    "gemini": GeminiProvider(),
    "bedrock": BedrockProvider(),
}

__all__ = ["PROVIDERS", "Provider", "RequestInfo", "ResponseSummary", "StreamTracker"]
