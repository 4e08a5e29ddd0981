"""Tests for spendgate.accounting.tokens: offline, checksum-verified encodings and prompt estimates.

References are built independently of spendgate.accounting.tokens: tiktoken's own constructors in
tiktoken_ext.openai_public, with only their download redirected to the packaged files.
"""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import tiktoken
import tiktoken.load
import tiktoken.model
import tiktoken_ext.openai_public as openai_public

import spendgate.accounting
from spendgate.accounting.tokens import IMAGE_TOKENS, EncodingDataError, TokenEstimator

DATA = Path(spendgate.accounting.__file__).parent / "data"
NAMES = ("o200k_base", "cl100k_base")
SAMPLES = [
    "hello world",
    "tiktoken is great!",
    "  leading spaces\n\n\ttabs and\r\nCRLF   trailing  ",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n",
    "Ünïcödé — “quotes”, emoji 🧪🚀, 中文字符, العربية, हिन्दी, 日本語のテキスト",
    "numbers 1234567890 3.14159 -42 1e10",
    "I'm you're they'll WE'VE it's",
    "<|endoftext|> <|fim_prefix|> <|endofprompt|> plain text around specials",
]

# OpenAI cookbook "How to count tokens with tiktoken", example_messages.
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that "
     "translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user",
     "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant",
     "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more "
     "bandwidth to touch base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean "
     "for the client deliverable."},
]


def _sums() -> dict[str, str]:
    lines = (DATA / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tiktoken.Encoding]:
    """tiktoken's own o200k_base()/cl100k_base() definitions on the packaged files."""
    sums = _sums()

    def local_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        filename = url.rsplit("/", 1)[-1]
        # The packaged files are the official ones: tiktoken pins the same hashes.
        assert expected_hash == sums[filename]
        return tiktoken.load.load_tiktoken_bpe(str(DATA / filename), expected_hash=expected_hash)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken-cache")))
        mp.setattr(openai_public, "load_tiktoken_bpe", local_load)
        return {n: tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[n]()) for n in NAMES}


@pytest.fixture(scope="module")
def est() -> TokenEstimator:
    return TokenEstimator()


def _copy_data(dst: Path, *names: str) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("SHA256SUMS", *names):
        shutil.copyfile(DATA / name, dst / name)
    return dst


def cookbook_num_tokens(messages: list[dict[str, str]], encoding: tiktoken.Encoding) -> int:
    """Verbatim cookbook num_tokens_from_messages for gpt-4 / gpt-4o models."""
    tokens_per_message, tokens_per_name = 3, 1
    num_tokens = 0
    for message in messages:
        num_tokens += tokens_per_message
        for key, value in message.items():
            num_tokens += len(encoding.encode(value))
            if key == "name":
                num_tokens += tokens_per_name
    num_tokens += 3  # every reply is primed with <|start|>assistant<|message|>
    return num_tokens


# --- loading -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_encoding_is_identical_to_tiktoken_definition(
    est: TokenEstimator, reference: dict[str, tiktoken.Encoding], name: str
) -> None:
    ours, ref = est.encoding(name), reference[name]
    assert ours.name == ref.name
    assert ours._pat_str == ref._pat_str
    assert ours._special_tokens == ref._special_tokens
    assert ours._mergeable_ranks == ref._mergeable_ranks
    assert ours.n_vocab == ref.n_vocab
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
        assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


def test_well_known_counts(est: TokenEstimator) -> None:
    assert est.count_text("hello world", "gpt-4o") == 2
    assert est.count_text("hello world", "gpt-4") == 2
    assert est.count_text("tiktoken is great!", "gpt-4") == 6
    assert est.encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]
    assert est.count_text("", "gpt-4o") == 0


def test_loads_offline_without_tiktoken_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    est = TokenEstimator(_copy_data(tmp_path / "data", *(f"{n}.tiktoken" for n in NAMES)))
    assert est.count_text("hello world", "gpt-4o") == 2
    assert est.count_text("tiktoken is great!", "gpt-3.5-turbo") == 6
    assert not cache.exists()  # nothing copied into tiktoken's download cache


def test_corrupted_file_is_refused(tmp_path: Path) -> None:
    data = _copy_data(tmp_path, "o200k_base.tiktoken", "cl100k_base.tiktoken")
    path = data / "o200k_base.tiktoken"
    raw = bytearray(path.read_bytes())
    # Still well-formed (one base64 letter swapped), so only the checksum can catch it.
    index = raw.index(b" ", 1000) - 2
    raw[index] = ord("A") if raw[index] != ord("A") else ord("B")
    path.write_bytes(bytes(raw))
    est = TokenEstimator(data)
    for _ in range(2):  # the failure is memoised, not silently retried into success
        with pytest.raises(EncodingDataError, match=r"o200k_base\.tiktoken is corrupt: sha256"):
            est.count_text("hello", "gpt-4o")
    assert est.count_text("hello world", "gpt-4") == 2  # the intact file still loads


def test_file_missing_from_sha256sums_is_refused(tmp_path: Path) -> None:
    data = _copy_data(tmp_path, "cl100k_base.tiktoken")
    sums = (data / "SHA256SUMS").read_text().splitlines()
    (data / "SHA256SUMS").write_text("\n".join(s for s in sums if "cl100k" not in s) + "\n")
    with pytest.raises(EncodingDataError, match="not listed"):
        TokenEstimator(data).count_text("hello", "gpt-4")


def test_missing_data_dir_raises_and_is_retried(tmp_path: Path) -> None:
    est = TokenEstimator(str(tmp_path / "data"))
    with pytest.raises(EncodingDataError, match="cannot load cl100k_base"):
        est.count_text("hello", "gpt-4")
    _copy_data(tmp_path / "data", "cl100k_base.tiktoken")  # I/O errors are not memoised
    assert est.count_text("hello world", "gpt-4") == 2


def test_concurrent_first_use_loads_once(tmp_path: Path) -> None:
    data = _copy_data(tmp_path, "cl100k_base.tiktoken")
    barrier = threading.Barrier(8)
    seen: list[tiktoken.Encoding] = []

    def worker() -> None:
        barrier.wait()
        seen.append(TokenEstimator(data).encoding("cl100k_base"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and all(enc is seen[0] for enc in seen)


def test_unknown_encoding_name(est: TokenEstimator) -> None:
    with pytest.raises(ValueError, match="unsupported encoding"):
        est.encoding("p50k_base")


# --- model -> encoding ---------------------------------------------------------------------

O200K_MODELS = [
    "gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-4.1", "gpt-4.1-nano", "gpt-4.5-preview",
    "gpt-5", "gpt-5-mini", "o1", "o1-mini", "o3", "o3-mini", "o4-mini", "chatgpt-4o-latest",
    "gpt-oss-120b", "codex-mini-latest", "ft:gpt-4o-mini:acme::abc123", "openai/gpt-4o",
    "azure/gpt-4.1", "GPT-4O",
    # approximations: unknown, self-hosted and non-OpenAI models
    None, "", "my-deployment", "claude-sonnet-4-5", "anthropic/claude-3-5-haiku",
    "meta-llama/Llama-3.1-8B-Instruct", "mistral-large-latest", "qwen2.5-coder",
]
CL100K_MODELS = [
    "gpt-4", "gpt-4-0613", "gpt-4-32k", "gpt-4-turbo", "gpt-4-turbo-2024-04-09", "gpt-3.5",
    "gpt-3.5-turbo", "gpt-3.5-turbo-instruct", "gpt-35-turbo", "text-embedding-3-small",
    "text-embedding-3-large", "text-embedding-ada-002", "davinci-002", "babbage-002",
    "openai/gpt-4", "azure/gpt-35-turbo-16k", "ft:gpt-3.5-turbo-0613:acme::xyz",
]


@pytest.mark.parametrize(("models", "expected"),
                         [(O200K_MODELS, "o200k_base"), (CL100K_MODELS, "cl100k_base")])
def test_encoding_name_for(models: list[str | None], expected: str) -> None:
    for model in models:
        assert TokenEstimator.encoding_name_for(model) == expected, model


def test_encoding_name_agrees_with_tiktoken_model_table() -> None:
    for model in [*O200K_MODELS, *CL100K_MODELS]:
        bare = (model or "").lower().rsplit("/", 1)[-1]
        try:
            theirs = tiktoken.model.encoding_name_for_model(bare)
        except KeyError:  # not an OpenAI model tiktoken knows: our default applies
            continue
        # o200k_harmony (gpt-oss) is o200k_base plus extra special tokens: same ordinary text.
        assert TokenEstimator.encoding_name_for(model) == theirs.replace("harmony", "base")


# --- count_text ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_special_token_text_is_plain_text(
    est: TokenEstimator, reference: dict[str, tiktoken.Encoding], model: str
) -> None:
    text = "before <|endoftext|> middle <|endofprompt|><|fim_prefix|> after"
    ref = reference[TokenEstimator.encoding_name_for(model)]
    with pytest.raises(ValueError):  # what a naive encode() would do
        ref.encode(text)
    assert est.count_text(text, model) == len(ref.encode_ordinary(text)) > 10
    body = {"messages": [{"role": "user", "content": text}]}
    assert est.estimate_prompt("chat", body, model) == 3 + 3 + 1 + est.count_text(text, model)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_megabyte_text(
    est: TokenEstimator, reference: dict[str, tiktoken.Encoding], model: str
) -> None:
    assert est.count_text(" hello" * 175_000, model) == 175_000  # " hello" is one token
    mixed = "".join(SAMPLES) * (1_000_000 // len("".join(SAMPLES)))
    assert len(mixed.encode()) > 1_000_000
    ref = reference[TokenEstimator.encoding_name_for(model)]
    assert est.count_text(mixed, model) == len(ref.encode_ordinary(mixed))


# --- estimate_prompt: chat -----------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4-0613"])
def test_chat_matches_cookbook(
    est: TokenEstimator, reference: dict[str, tiktoken.Encoding], model: str
) -> None:
    expected = 3 + sum(
        3 + sum(est.count_text(v, model) for v in m.values()) + ("name" in m)
        for m in COOKBOOK_MESSAGES
    )
    ref = reference[TokenEstimator.encoding_name_for(model)]
    assert expected == cookbook_num_tokens(COOKBOOK_MESSAGES, ref)
    assert est.estimate_prompt("chat", {"messages": COOKBOOK_MESSAGES}, model) == expected
    # The cookbook reports these counts from the real API for this example.
    assert expected == {"gpt-4o": 124, "gpt-4-0613": 129}[model]


def test_chat_content_parts_tools_and_tool_calls(est: TokenEstimator) -> None:
    m = "gpt-4o"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    call = [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    body = {"tools": tools, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}},
            {"type": "input_audio", "input_audio": {"data": "B" * 5000, "format": "wav"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": call},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    ]}
    c = est.count_text
    expected = (
        3
        + 3 + c("user", m) + c("What is in this image?", m) + IMAGE_TOKENS  # audio skipped
        + 3 + c("assistant", m) + c(orjson.dumps(call).decode(), m)
        + 3 + c("tool", m) + c("call_1", m) + c("18C and sunny", m)
        + c(orjson.dumps(tools).decode(), m)
    )
    assert est.estimate_prompt("chat", body, m) == expected
    legacy = {"messages": [{"role": "user", "content": "hi"}], "functions": tools}
    assert est.estimate_prompt("chat", legacy, m) == (
        3 + 3 + c("user", m) + c("hi", m) + c(orjson.dumps(tools).decode(), m))


def test_chat_anthropic(est: TokenEstimator) -> None:
    m = "claude-sonnet-4-5"
    c = est.count_text
    tool_input = {"query": "weather in Paris"}
    body = {
        "system": [{"type": "text", "text": "You are terse."},
                   {"type": "text", "text": "Be kind."}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hidden", "signature": "x"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "tu_1", "name": "search", "input": tool_input},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "tu_1",
                 "content": [{"type": "text", "text": "18C"}]},
                {"type": "tool_result", "tool_use_id": "tu_2", "content": "sunny"},
                {"type": "image", "source": {"type": "base64", "data": "C" * 4000}},
            ]},
        ],
    }
    expected = (
        3
        + 3 + c("system", m) + c("You are terse.", m) + c("Be kind.", m)
        + 3 + c("user", m) + c("Weather?", m)
        + 3 + c("assistant", m) + c("Checking.", m) + c("search", m)
        + c(orjson.dumps(tool_input).decode(), m)
        + 3 + c("user", m) + c("18C", m) + c("sunny", m) + IMAGE_TOKENS
    )
    assert est.estimate_prompt("chat", body, m, protocol="anthropic") == expected
    plain = {"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]}
    assert est.estimate_prompt("chat", plain, m, protocol="anthropic") == (
        3 + 3 + c("system", m) + c("Be brief.", m) + 3 + c("user", m) + c("Hi", m))
    # Under the OpenAI protocol a top-level "system" is not part of the prompt.
    assert est.estimate_prompt("chat", plain, m) == 3 + 3 + c("user", m) + c("Hi", m)


# --- estimate_prompt: other operations -----------------------------------------------------


@pytest.mark.parametrize(("operation", "key"),
                         [("text_completion", "prompt"), ("embeddings", "input")])
def test_prompt_and_input_shapes(est: TokenEstimator, operation: str, key: str) -> None:
    m = "text-embedding-3-small" if operation == "embeddings" else "gpt-3.5-turbo-instruct"
    c = est.count_text
    cases: list[tuple[Any, int]] = [
        ("tiktoken is great!", 6),
        ("", 0),
        (["tiktoken is great!", "hello world"], 8),
        ([15339, 1917, 0], 3),
        ([[15339, 1917], [1, 2, 3, 4]], 6),
        (["the cat", [1, 2]], c("the cat", m) + 2),
    ]
    for value, expected in cases:
        assert est.estimate_prompt(operation, {key: value, "model": m}, m) == expected, value


def test_responses(est: TokenEstimator) -> None:
    m = "gpt-5"
    c = est.count_text
    assert est.estimate_prompt("responses", {"input": "Tell me a joke"}, m) == (
        3 + 3 + c("user", m) + c("Tell me a joke", m))
    body = {
        "instructions": "Answer in French.",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "Describe this"},
                {"type": "input_image", "image_url": "https://example.com/cat.png"},
            ]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Un chat."}]},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ],
    }
    expected = (
        3
        + 3 + c("system", m) + c("Answer in French.", m)
        + 3 + c("user", m) + c("Describe this", m) + IMAGE_TOKENS
        + 3 + c("assistant", m) + c("Un chat.", m)
        + 3 + c("c1", m) + c("42", m)
    )
    assert est.estimate_prompt("responses", body, m) == expected
    assert est.estimate_prompt("responses", {"instructions": "Be brief."}, m) == (
        3 + 3 + c("system", m) + c("Be brief.", m))


UNCOUNTABLE: list[tuple[str, Any]] = [
    ("images", {"prompt": "a cat"}),
    ("audio_transcription", {"file": "x"}),
    ("chat", None),
    ("chat", ["not", "a", "dict"]),
    ("chat", {}),
    ("chat", {"messages": "hello"}),
    ("chat", {"messages": []}),
    ("chat", {"messages": ["just a string"]}),
    ("chat", {"prompt": "wrong operation's field"}),
    ("text_completion", {}),
    ("text_completion", {"prompt": None}),
    ("text_completion", {"prompt": {"text": "x"}}),
    ("text_completion", {"prompt": []}),
    ("embeddings", {"input": [{"text": "x"}]}),
    ("embeddings", {"input": ["ok", None]}),
    ("embeddings", {"input": [[1, "2"]]}),
    ("embeddings", {"input": 42}),
    ("responses", {}),
    ("responses", {"input": 42}),
    ("responses", {"input": []}),
]


@pytest.mark.parametrize(("operation", "body"), UNCOUNTABLE)
def test_uncountable_gives_none_without_loading(
    tmp_path: Path, operation: str, body: Any
) -> None:
    # A data dir that cannot load proves unknown shapes are rejected before any encoding work.
    assert TokenEstimator(tmp_path / "absent").estimate_prompt(operation, body, "gpt-4o") is None


def test_odd_values_do_not_raise(est: TokenEstimator) -> None:
    nested: list[Any] = []
    cur = nested
    for _ in range(300):  # deeper than orjson will serialise
        cur.append([])
        cur = cur[0]
    body = {"messages": [
        {"role": "user", "content": 42},
        {"role": "user", "content": [None, 7, {"type": "text", "text": 3}, "bare string"]},
        {"role": "user", "content": "x", "seed": 10**30, "meta": nested, "flag": True},
        "not a message",
    ]}
    assert isinstance(est.estimate_prompt("chat", body, "gpt-4o"), int)
