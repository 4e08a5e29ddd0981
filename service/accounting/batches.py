"""Batches: who created each batch, and which results were already accounted.

A batch is created by one call (``batch_create``) and its results downloaded by another,
maybe by someone else, maybe twice. ``BatchBook`` remembers, per upstream, the caller that
created a batch (from the create call's response: the batch id), the batch an output file
belongs to (OpenAI: ``output_file_id`` of a ``batch_status`` response), and the results
already accounted, so each result line is accounted once, as one call at batch prices,
attributed to the batch's creator (``RecordBuilder.build_all``).

Bounded: at most ``limit`` entries per table, the oldest forgotten first. In memory, per
process: a restart forgets, so results downloaded after it are attributed to the caller
that downloads them, and a second download after a restart is accounted again.
Used from the record pipeline's one thread only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from spendgate.providers import anthropic, openai
from spendgate.providers.base import BatchLine

DEFAULT_LIMIT = 100_000
# Per wire protocol: (batch id, output file id) of a create/status response; result lines.
PARSERS: dict[str, tuple[Callable[[bytes], tuple[str | None, str | None]],
                         Callable[[bytes], list[BatchLine]]]] = {
    "openai": (openai.batch_ids, openai.batch_results),
    "anthropic": (anthropic.batch_ids, anthropic.batch_results),
}
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class Owner:
    """The caller that created a batch."""

    project: str
    user: str | None
    virtual_key: str | None


class BatchBook:
    """See the module docstring. Not thread-safe: the pipeline thread's own."""

    __slots__ = ("_accounted", "_files", "_limit", "_owners")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._owners: dict[tuple[str, str], Owner] = {}
        self._files: dict[tuple[str, str], str] = {}
        self._accounted: dict[tuple[str, str], None] = {}

    def _put(self, table: dict[tuple[str, str], _V], key: tuple[str, str], value: _V) -> None:
        table.pop(key, None)
        if len(table) >= self._limit:
            del table[next(iter(table))]  # dicts keep insertion order: the oldest goes
        table[key] = value

    def created(self, upstream: str, batch_id: str, owner: Owner) -> None:
        self._put(self._owners, (upstream, batch_id), owner)

    def output_file(self, upstream: str, file_id: str, batch_id: str) -> None:
        self._put(self._files, (upstream, file_id), batch_id)

    def owner(self, upstream: str, ref: str) -> Owner | None:
        """The creator of the batch ``ref`` names (a batch id, or its output file's id)."""
        batch_id = self._files.get((upstream, ref), ref)
        return self._owners.get((upstream, batch_id))

    def first_download(self, upstream: str, ref: str) -> bool:
        """True the first time the results ``ref`` names are seen; False after."""
        key = (upstream, self._files.get((upstream, ref), ref))
        if key in self._accounted:
            return False
        self._put(self._accounted, key, None)
        return True
