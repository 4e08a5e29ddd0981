"""Offline token estimation for calls whose upstream reported no usage.

Used when a self-hosted server omits ``usage``, a stream is cut off, or the caller hangs up.
Encodings come only from the packaged ``service/data/*.tiktoken`` files, verified against
``service/data/SHA256SUMS``; nothing here touches the network.

Threading: ``TokenEstimator`` is thread-safe. Each encoding is loaded lazily, once per process
and data directory, under a lock (o200k_base ~0.25 s, cl100k_base ~0.1 s), then shared
read-only. Loading and encoding are CPU-bound (~2 ms per 100 kB of text), so this is meant to
run OFF the event loop, in the record pipeline's worker thread; tiktoken releases the GIL while
encoding, so other threads keep running.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import threading
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, TypeGuard

import orjson
import tiktoken

__all__ = ["IMAGE_TOKENS", "EncodingDataError", "TokenEstimator"]

# Copied verbatim from tiktoken_ext/openai_public.py (tiktoken 0.14): calling those
# constructors would download the files, so only the constants are reused here.
_O200K_PAT = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
_CL100K_PAT = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""  # noqa: E501
_SPECS: dict[str, tuple[str, dict[str, int]]] = {  # name -> (pat_str, special_tokens)
    "o200k_base": (_O200K_PAT, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
    "cl100k_base": (_CL100K_PAT, {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                                  "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                                  "<|endofprompt|>": 100276}),
}

_CL100K_EXACT = {"gpt-4", "gpt-3.5", "text-embedding-ada-002", "davinci-002", "babbage-002"}
_CL100K_PREFIXES = ("gpt-4-", "gpt-3.5-", "gpt-35-", "text-embedding-3")

#: Fixed cost per image part: OpenAI's low-detail baseline for gpt-4o. High-detail images
#: cost more (85 + 170 per 512 px tile), so this is a floor, not an exact figure.
IMAGE_TOKENS = 85
# OpenAI cookbook ``num_tokens_from_messages`` (gpt-4 / gpt-4o chat format).
_PER_MESSAGE, _PER_NAME, _REPLY_PRIMING = 3, 1, 3

_LOCK = threading.Lock()
# Keyed by (data directory, encoding name). A checksum failure is memoised as its message:
# a corrupt file will not heal within the process and re-hashing it per call is waste.
_CACHE: dict[tuple[str, str], tiktoken.Encoding | str] = {}


class EncodingDataError(RuntimeError):
    """A packaged encoding file is missing, unlisted in SHA256SUMS, or fails its checksum."""


def _load(data_dir: Traversable, name: str) -> tiktoken.Encoding:
    # Not tiktoken.load.load_tiktoken_bpe: for local paths it copies the file into a temp
    # cache (TIKTOKEN_CACHE_DIR), skips the hash check when that cache already holds a good
    # copy or when caching is disabled, and raises if the cache directory is unwritable.
    filename = f"{name}.tiktoken"
    sums = {}
    for line in (data_dir / "SHA256SUMS").read_text(encoding="ascii").splitlines():
        if line.strip():
            digest, listed = line.split(maxsplit=1)
            sums[listed.strip().lstrip("*")] = digest.lower()  # "*" marks sha256sum's binary mode
    if filename not in sums:
        raise EncodingDataError(f"{filename} is not listed in {data_dir}/SHA256SUMS")
    data = (data_dir / filename).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sums[filename]:
        raise EncodingDataError(f"{data_dir}/{filename} is corrupt: sha256 {actual} != "
                                f"{sums[filename]} listed in SHA256SUMS; reinstall spendgate")
    # Same parse as tiktoken's (b64decode is a2b_base64 plus overhead: ~30% slower here).
    ranks = {binascii.a2b_base64(tok): int(r) for tok, r in map(bytes.split, data.splitlines())}
    pat_str, special_tokens = _SPECS[name]
    return tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=ranks,
                             special_tokens=special_tokens)


class TokenEstimator:
    """Estimate token counts offline. Thread-safe; cheap to construct (encodings are shared).

    ``data_dir`` holds ``*.tiktoken`` files plus ``SHA256SUMS``; it defaults to the package
    data. Loading errors raise :class:`EncodingDataError` on every call that needs that file.
    """

    def __init__(self, data_dir: Traversable | str | os.PathLike[str] | None = None) -> None:
        if data_dir is None:
            data_dir = resources.files("spendgate.accounting") / "data"
        elif isinstance(data_dir, str | os.PathLike):
            data_dir = Path(data_dir)
        self._data_dir: Traversable = data_dir
        self._dir_key = str(data_dir)

    def encoding(self, name: str) -> tiktoken.Encoding:
        """The encoding ``name`` ("o200k_base" | "cl100k_base"), loaded on first use."""
        if name not in _SPECS:
            raise ValueError(f"unsupported encoding {name!r}; expected one of {sorted(_SPECS)}")
        key = (self._dir_key, name)
        cached = _CACHE.get(key)  # lock-free fast path: dict reads are atomic
        if cached is None:
            with _LOCK:
                cached = _CACHE.get(key)
                if cached is None:
                    try:
                        cached = _load(self._data_dir, name)
                    except EncodingDataError as exc:
                        cached = str(exc)
                    except Exception as exc:  # I/O may be transient: raise, don't memoise
                        raise EncodingDataError(
                            f"cannot load {name} from {self._data_dir}: {exc!r}") from exc
                    _CACHE[key] = cached
        if isinstance(cached, str):
            raise EncodingDataError(cached)
        return cached

    @staticmethod
    def encoding_name_for(model: str | None) -> str:
        """Encoding for ``model``: cl100k_base for gpt-4 (not 4o/4.1/4.5), gpt-3.5, Azure
        gpt-35, text-embedding-3*, text-embedding-ada-002, davinci-002 and babbage-002;
        otherwise o200k_base (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1/o3/o4, chatgpt-4o, gpt-oss,
        codex...). o200k_base is also the default for unknown, self-hosted and non-OpenAI models
        (Claude, Llama, Mistral...), for which it is only an approximation of their tokenizer.
        Provider prefixes ("openai/", "azure/") and fine-tune wrappers ("ft:gpt-4o:org::id")
        are stripped first."""
        name = (model or "").strip().lower().rsplit("/", 1)[-1]
        if name.startswith("ft:"):
            name = name[3:].split(":", 1)[0]
        if name in _CL100K_EXACT or name.startswith(_CL100K_PREFIXES):
            return "cl100k_base"
        return "o200k_base"

    def count_text(self, text: str, model: str | None) -> int:
        """Tokens in ``text`` for ``model``. Special-token text such as "<|endoftext|>" is
        counted as ordinary text, never raises."""
        return len(self.encoding(self.encoding_name_for(model)).encode_ordinary(text))

    def estimate_prompt(self, operation: str, body: dict[str, Any] | None, model: str | None,
                        *, protocol: Literal["openai", "anthropic"] = "openai") -> int | None:
        """Estimated prompt tokens of a request ``body``, or None when it has nothing to count.

        "chat": ``messages`` of OpenAI chat completions, or of Anthropic messages when
        ``protocol="anthropic"`` (top-level ``system`` then counts as one more message). OpenAI
        cookbook formula: per message 3 + tokens of every field value (role, content, name...)
        + 1 per ``name``, plus 3 priming the reply; Anthropic's framing is unpublished, so there
        it is an approximation. Content parts: text counted, images ``IMAGE_TOKENS`` each,
        tool_use its name and JSON input, tool_result its content; audio, files and thinking
        are skipped. Other non-text values (tool_calls...) and ``tools`` / ``functions`` count
        as their JSON text (an approximation). "responses": ``instructions`` + ``input``
        (string or items) + ``tools``, same formula. "text_completion" ``prompt`` and
        "embeddings" ``input``: a string, non-empty list of strings, token ids or token-id
        lists (one per id, no overhead). Any other operation or body shape gives None.
        """
        if not isinstance(body, dict):
            return None
        if operation in ("text_completion", "embeddings"):
            value = body.get("prompt" if operation == "text_completion" else "input")
            if not _is_input_shape(value):
                return None
            return _count_input(self.encoding(self.encoding_name_for(model)), value)
        messages = _as_messages(operation, body, protocol)
        if messages is None:  # decided before loading an encoding: unknown shapes stay cheap
            return None
        enc = self.encoding(self.encoding_name_for(model))
        total = _REPLY_PRIMING
        for message in messages:
            if isinstance(message, dict):
                total += _PER_MESSAGE + _message_tokens(enc, message)
        for key in ("tools", "functions"):
            if body.get(key):
                total += _json_tokens(enc, body[key])
        return total


def _as_messages(operation: str, body: dict[str, Any], protocol: str) -> list[Any] | None:
    """Chat / Responses bodies as one list of message-like dicts; None if not that shape."""
    if operation == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        system = body.get("system") if protocol == "anthropic" else None
    elif operation == "responses":
        items = body.get("input")
        messages = [{"role": "user", "content": items}] if isinstance(items, str) else items
        system = body.get("instructions")
        if messages is None and isinstance(system, str):
            messages = []
        if not isinstance(messages, list):
            return None
    else:
        return None
    if system is None and not any(isinstance(m, dict) for m in messages):
        return None  # an empty conversation gives nothing to count
    return messages if system is None else [{"role": "system", "content": system}, *messages]


def _is_input_shape(value: object) -> TypeGuard[str | list[Any]]:
    """A completion ``prompt`` / embeddings ``input``: str, or list of str | int | list[int]."""
    return isinstance(value, str) or (isinstance(value, list) and bool(value) and all(
        isinstance(item, str | int)
        or (isinstance(item, list) and all(isinstance(i, int) for i in item))
        for item in value))


def _count_input(enc: tiktoken.Encoding, value: str | list[Any]) -> int:
    if isinstance(value, str):
        return len(enc.encode_ordinary(value))
    # Token ids count one each; pre-tokenised prompts carry no text to encode.
    return sum(len(enc.encode_ordinary(item)) if isinstance(item, str)
               else 1 if isinstance(item, int) else len(item) for item in value)


def _json_tokens(enc: tiktoken.Encoding, value: object) -> int:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # orjson refuses e.g. ints beyond 64 bits; any rendering will do
        text = str(value)
    return len(enc.encode_ordinary(text))


def _message_tokens(enc: tiktoken.Encoding, message: dict[str, Any]) -> int:
    total = 0
    for key, value in message.items():
        if key == "type":  # Responses item discriminator ("message"), not model-visible text
            continue
        if key == "content":
            total += _content_tokens(enc, value)
        elif isinstance(value, str):
            total += len(enc.encode_ordinary(value))
        elif value is not None:
            total += _json_tokens(enc, value)
        if key == "name":
            total += _PER_NAME
    return total


def _content_tokens(enc: tiktoken.Encoding, content: object) -> int:
    if isinstance(content, str):
        return len(enc.encode_ordinary(content))
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if not isinstance(part, dict):
            total += len(enc.encode_ordinary(part)) if isinstance(part, str) else 0
            continue
        kind, text = part.get("type"), part.get("text", part.get("refusal"))
        if isinstance(text, str):  # text / input_text / output_text / refusal
            total += len(enc.encode_ordinary(text))
        elif kind in ("image_url", "input_image", "image"):
            total += IMAGE_TOKENS
        elif kind == "tool_use":
            total += len(enc.encode_ordinary(str(part.get("name", ""))))
            total += _json_tokens(enc, part.get("input", {}))
        elif kind == "tool_result":
            total += _content_tokens(enc, part.get("content"))
    return total
