"""Tokens a self-hosted server says it served: its own Prometheus endpoint, read once per
allocation interval (``upstreams.X.gpu.metrics_url``).

Counters read (every series of a name summed), prompt and generated tokens:

* vLLM: ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``;
* TGI: ``tgi_request_input_length_sum``, ``tgi_request_generated_tokens_sum`` (histogram
  sums: tokens of finished requests);
* llama.cpp (``--metrics``): ``llamacpp:prompt_tokens_total``,
  ``llamacpp:tokens_predicted_total``.

``ServerCounter`` turns successive readings into tokens per interval; a counter that went
down (the server restarted) counts from zero. No state beyond the last reading; used from
the record pipeline's thread only.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

PROMPT = ("vllm:prompt_tokens_total", "tgi_request_input_length_sum",
          "llamacpp:prompt_tokens_total")
GENERATED = ("vllm:generation_tokens_total", "tgi_request_generated_tokens_sum",
             "llamacpp:tokens_predicted_total")
MAX_BYTES = 8 * 1024 * 1024


def read_tokens(url: str, timeout_s: float) -> tuple[int, int]:
    """(prompt, generated) tokens the server has served since it started. Raises ``OSError``
    or ``ValueError`` when it cannot be read or names none of the counters."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read(MAX_BYTES).decode("utf-8", "replace")
    prompt = generated = 0.0
    found = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in PROMPT:
                prompt += sample.value
                found = True
            elif sample.name in GENERATED:
                generated += sample.value
                found = True
    if not found:
        raise ValueError("no vLLM, TGI or llama.cpp token counters at that URL")
    return int(prompt), int(generated)


class ServerCounter:
    """Successive readings of one server's counters, as tokens served per interval."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._last: tuple[int, int] | None = None

    def interval(self) -> tuple[int, int] | None:
        """Tokens served since the previous reading; None on the first reading.
        Raises as ``read_tokens`` does (the previous reading is kept)."""
        now = read_tokens(self.url, self.timeout_s)
        last, self._last = self._last, now
        if last is None:
            return None
        return tuple(n - b if n >= b else n for n, b in zip(now, last, strict=True))  # type: ignore[return-value]
