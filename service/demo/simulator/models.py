"""What the simulated upstream's models are like: names, pace, length, and what they say.

Used by ``demo.simulator.server``. A ``ModelProfile`` gives a model's reported snapshot name, its
time to first token and streaming pace (ranges a call draws from), the median length of its
answers, and whether it reports usage at all (self-hosted servers such as older Ollama or
llama.cpp builds do not). ``profile_for`` resolves any model name: known names, their dated
snapshots, self-hosted families by prefix, and a generic profile for everything else, so the
simulator answers whatever model a caller tries.

``Composer`` writes an answer of a given length in tokens from a fixed bank of sentences. It
returns the text as pieces (one word each, ~1 token) with each piece's token count, counted
with the model's tiktoken encoding, so a stream can be paced per token and the reported usage
is exactly what was streamed. Thread-safe after construction; the per-encoding piece tables
are built lazily (first use per encoding, a few ms) under a lock.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, replace

from spendgate.accounting.tokens import TokenEstimator

#: Longest answer the simulator writes, whatever max_tokens says: bounds memory and time.
MAX_OUTPUT_TOKENS = 4096
#: Output cap when a request sets no max_tokens.
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How one model behaves. Times in seconds at speed 1; ranges are drawn uniformly."""

    name: str
    snapshot: str | None              # reported model name; None: echo what was asked
    owner: str                        # openai | anthropic | self-hosted
    ttft_s: tuple[float, float]
    tokens_per_s: tuple[float, float]
    median_output: int                # median answer length in tokens, before max_tokens
    reports_usage: bool = True
    embedding_dims: int = 0           # > 0: an embedding model with this many dimensions
    display_name: str = ""

    @property
    def reported(self) -> str:
        return self.snapshot or self.name


_PROFILES = (
    ModelProfile("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "openai", (0.15, 0.45), (70, 120), 160),
    ModelProfile("gpt-4o", "gpt-4o-2024-08-06", "openai", (0.30, 0.80), (40, 80), 240),
    ModelProfile("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", "openai", (0.20, 0.50), (60, 110), 180),
    ModelProfile("gpt-4.1", "gpt-4.1-2025-04-14", "openai", (0.35, 0.90), (40, 75), 260),
    ModelProfile("text-embedding-3-small", None, "openai", (0.03, 0.12), (0, 0), 0,
                 embedding_dims=1536),
    ModelProfile("text-embedding-3-large", None, "openai", (0.05, 0.18), (0, 0), 0,
                 embedding_dims=3072),
    ModelProfile("claude-sonnet-4-6", None, "anthropic", (0.45, 0.90), (45, 75), 280,
                 display_name="Claude Sonnet 4.6"),
    ModelProfile("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "anthropic", (0.45, 0.90),
                 (45, 75), 280, display_name="Claude Sonnet 4.5"),
    ModelProfile("claude-haiku-4-5", "claude-haiku-4-5-20251001", "anthropic", (0.20, 0.50),
                 (90, 120), 140, display_name="Claude Haiku 4.5"),
    ModelProfile("claude-opus-4-1", "claude-opus-4-1-20250805", "anthropic", (0.70, 1.40),
                 (25, 45), 320, display_name="Claude Opus 4.1"),
    ModelProfile("llama3.1:8b", None, "self-hosted", (0.10, 0.30), (30, 50), 200,
                 reports_usage=False),
)
PROFILES: dict[str, ModelProfile] = {p.name: p for p in _PROFILES}
_BY_SNAPSHOT = {p.snapshot: p for p in _PROFILES if p.snapshot}
# Families served by self-hosted runtimes (Ollama, llama.cpp, vLLM...): no usage reported.
_SELF_HOSTED = ("llama", "qwen", "mistral", "mixtral", "gemma", "phi", "deepseek", "gpt-oss")
_GENERIC_OPENAI = ModelProfile("generic", None, "openai", (0.20, 0.60), (50, 100), 200)
_GENERIC_ANTHROPIC = replace(_GENERIC_OPENAI, owner="anthropic", ttft_s=(0.40, 0.90))


def profile_for(model: str, protocol: str = "openai") -> ModelProfile:
    """The profile of ``model`` as a caller named it; the reported name follows the caller."""
    if model in PROFILES:
        return PROFILES[model]
    if model in _BY_SNAPSHOT:
        return replace(_BY_SNAPSHOT[model], snapshot=model)
    base = model.lower().rsplit("/", 1)[-1]
    if base.startswith(_SELF_HOSTED):
        return replace(PROFILES["llama3.1:8b"], name=model, snapshot=None)
    if "embedding" in base:
        return replace(PROFILES["text-embedding-3-small"], name=model)
    generic = _GENERIC_ANTHROPIC if protocol == "anthropic" else _GENERIC_OPENAI
    return replace(generic, name=model)


def answer_length(rng: random.Random, profile: ModelProfile) -> int:
    """Tokens a model wants to say: log-normal around the profile's median (mostly short
    answers, a long tail), as real chat traffic is. ``max_tokens`` is applied by ``compose``."""
    return max(5, round(profile.median_output * math.exp(rng.gauss(0.0, 0.55))))


_SENTENCES = (
    "The short answer is that it depends on the size of the prompt and the model you use.",
    "Here is a summary of the main points from the document you shared.",
    "First, check that the request includes the right model name and a valid key.",
    "Most of the cost comes from the input tokens, so a shorter prompt saves money.",
    "You can cache the system prompt to reduce both latency and cost on repeated calls.",
    "The results show a clear trend over the last three months.",
    "Based on the data, the search team used more tokens than any other project this week.",
    "A smaller model is often good enough for classification and routing tasks.",
    "To fix this, update the configuration and restart the service.",
    "The customer asked about a refund for an order that arrived late.",
    "This query can be rewritten to match more relevant documents in the index.",
    "The table below lists each region with its revenue and growth rate.",
    "In summary, the new version is faster and uses less memory than the old one.",
    "Let me know if you would like a more detailed explanation of any step.",
    "The error usually means that the rate limit was reached for a short time.",
    "Streaming the response lets the user see the first words much sooner.",
    "We recommend setting a budget for each project so that spend stays predictable.",
    "The report covers sales, support tickets and product usage for the quarter.",
    "There are three options, and each one has different trade offs in cost and quality.",
    "The function returns a list of results sorted by relevance score.",
    "Please note that the account settings page has moved to a new location.",
    "The latency of the upstream is the largest part of the total time of a call.",
    "Good evaluation data is the most important part of improving a prompt.",
    "The ticket was routed to the billing team with high priority.",
)


class Composer:
    """Writes answers of a given token length. Thread-safe."""

    def __init__(self, estimator: TokenEstimator) -> None:
        self._estimator = estimator
        self._tables: dict[str, list[list[tuple[str, int]]]] = {}
        self._lock = threading.Lock()

    def _table(self, model: str) -> list[list[tuple[str, int]]]:
        encoding_name = self._estimator.encoding_name_for(model)
        table = self._tables.get(encoding_name)
        if table is None:
            with self._lock:
                table = self._tables.get(encoding_name)
                if table is None:
                    encoding = self._estimator.encoding(encoding_name)
                    # Every word keeps its leading space: tiktoken splits text before each
                    # " word" and punctuation, so pieces count the same alone as in a text.
                    table = [[(piece, len(encoding.encode_ordinary(piece)))
                              for piece in (" " + word for word in sentence.split(" "))]
                             for sentence in _SENTENCES]
                    self._tables[encoding_name] = table
        return table

    def compose(self, rng: random.Random, model: str, wanted: int,
                limit: int) -> tuple[list[tuple[str, int]], bool]:
        """Pieces ``(text, tokens)`` of an answer, and whether ``limit`` cut it short.

        Whole sentences are written until ``wanted`` tokens are reached; the answer stops
        mid-sentence only where the next piece would pass ``limit`` (max_tokens).
        """
        table = self._table(model)
        pieces: list[tuple[str, int]] = []
        total = 0
        while total < wanted:
            for piece, count in rng.choice(table):
                if not pieces:
                    piece = piece[1:]  # an answer starts without a space
                    count = self._estimator.count_text(piece, model)
                if total + count > limit:
                    return pieces, True
                pieces.append((piece, count))
                total += count
        return pieces, False
