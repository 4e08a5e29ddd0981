"""Batches: who created each batch, and which results were already accounted.

A batch is created by one call (``batch_create``) and its results downloaded by another,
maybe by someone else, maybe twice, maybe through another replica or after a restart.
``BatchBook`` remembers, per upstream, the caller that created a batch (from the create
call's response: the batch id), the batch an output file belongs to (OpenAI:
``output_file_id`` of a ``batch_status`` response), and the results already accounted, so
each result line is accounted once, as one call at batch prices, attributed to the batch's
creator (``RecordBuilder.build_all``): its project, user, virtual key and tags.

Where it is kept: in this process (at most ``limit`` entries per table, the oldest forgotten
first) and, when ``shared()`` returns a store (the budget ledger's, which exists when
budgets, an admin key or ``store`` are configured), in that store too, for ``TTL_S`` (35
days: Anthropic keeps results 29 days; OpenAI batches finish within their 24 h window).
Owners and file links are ``remember``-ed there and ``recall``-ed by whichever replica (or
restarted process) downloads; "accounted" is ``claim``-ed, which only the first download
across all replicas wins. A store failure is logged here (the ledger counts it in
``spendgate_store_errors_total``) and the book falls back on what this process knows: an
unknown creator means the downloader is charged, and an unanswered claim means the results
are accounted (spend is never dropped; at worst counted twice). Without a store, a restart
forgets everything, like one process's memory.

Store round trips happen on the record pipeline's thread, never on the hot path; a download
is attributed to its creator only once the creating replica has recorded the create call
(well before any batch completes). Not thread-safe: the pipeline thread's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import orjson

from spendgate.providers import anthropic, openai
from spendgate.providers.base import BatchLine
from spendgate.tags import NO_TAGS, frozen

log = logging.getLogger("spendgate.pipeline")

DEFAULT_LIMIT = 100_000
TTL_S = 35 * 86400   # how long a shared store keeps a batch's owner, file link and claim
# Per wire protocol: (batch id, output file id) of a create/status response; result lines.
PARSERS: dict[str, tuple[Callable[[bytes], tuple[str | None, str | None]],
                         Callable[[bytes], list[BatchLine]]]] = {
    "openai": (openai.batch_ids, openai.batch_results),
    "anthropic": (anthropic.batch_ids, anthropic.batch_results),
}
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class Owner:
    """The caller that created a batch, and the tags of its create call (its result lines
    carry them: a batch's spend goes to the feature that created it)."""

    project: str
    user: str | None
    virtual_key: str | None
    tags: Mapping[str, str] = field(default_factory=lambda: NO_TAGS)


class SharedStore(Protocol):
    """What the book needs of a store every replica sees (``budgets.Ledger`` is one). Each
    method may raise on a store failure."""

    def claim(self, name: str, ttl_s: int) -> bool: ...

    def remember(self, name: str, value: str, ttl_s: int) -> None: ...

    def recall(self, name: str) -> str | None: ...


class BatchBook:
    """See the module docstring. ``shared``: the store to share with other replicas, asked
    at each use (a reload may open one); None, or returning None: this process only.
    Not thread-safe: the pipeline thread's own."""

    __slots__ = ("_accounted", "_files", "_limit", "_owners", "_shared")

    def __init__(self, limit: int = DEFAULT_LIMIT,
                 shared: Callable[[], SharedStore | None] | None = None) -> None:
        self._limit = limit
        self._shared = shared or (lambda: None)
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
        value = orjson.dumps([owner.project, owner.user, owner.virtual_key,
                              dict(owner.tags)]).decode()
        self._remember("owner", upstream, batch_id, value)

    def output_file(self, upstream: str, file_id: str, batch_id: str) -> None:
        if self._files.get((upstream, file_id)) == batch_id:
            return  # a batch polled again: already remembered
        self._put(self._files, (upstream, file_id), batch_id)
        self._remember("file", upstream, file_id, batch_id)

    def owner(self, upstream: str, ref: str) -> Owner | None:
        """The creator of the batch ``ref`` names (a batch id, or its output file's id)."""
        key = (upstream, self._batch(upstream, ref))
        owner = self._owners.get(key)
        if owner is None and (value := self._recall("owner", *key)) is not None:
            try:
                # A 4th item, the tags, since tags exist; an owner kept before has none.
                project, user, virtual_key, *rest = orjson.loads(value)
                owner = Owner(str(project), _opt(user), _opt(virtual_key), _tags(rest))
            except (orjson.JSONDecodeError, TypeError, ValueError):
                log.warning("unreadable batch owner in the shared store for upstream %s: "
                            "the downloader is charged", upstream)
                return None
            self._put(self._owners, key, owner)
        return owner

    def first_download(self, upstream: str, ref: str) -> bool:
        """True the first time the results ``ref`` names are seen (by any replica sharing
        the store); False after. True when the store does not answer: never drop spend."""
        key = (upstream, self._batch(upstream, ref))
        if key in self._accounted:
            return False
        self._put(self._accounted, key, None)
        shared = self._shared()
        if shared is None:
            return True
        try:
            return shared.claim(_name("accounted", *key), TTL_S)
        except Exception as error:
            log.warning("could not check with the shared store whether batch results from "
                        "upstream %s were accounted (%s): accounted here, maybe twice",
                        upstream, error)
            return True

    def _batch(self, upstream: str, ref: str) -> str:
        """The batch id ``ref`` names: an output file's batch, else ``ref`` itself."""
        batch_id = self._files.get((upstream, ref))
        if batch_id is None and (batch_id := self._recall("file", upstream, ref)) is not None:
            self._put(self._files, (upstream, ref), batch_id)
        return batch_id or ref

    def _remember(self, kind: str, upstream: str, ref: str, value: str) -> None:
        shared = self._shared()
        if shared is None:
            return
        try:
            shared.remember(_name(kind, upstream, ref), value, TTL_S)
        except Exception as error:
            log.warning("could not keep a batch's %s in the shared store (upstream %s: %s): "
                        "only this process knows it", kind, upstream, error)

    def _recall(self, kind: str, upstream: str, ref: str) -> str | None:
        shared = self._shared()
        if shared is None:
            return None
        try:
            return shared.recall(_name(kind, upstream, ref))
        except Exception as error:
            log.warning("could not read a batch's %s from the shared store (upstream %s: %s)",
                        kind, upstream, error)
            return None


def _name(kind: str, upstream: str, ref: str) -> str:
    # Upstream names have no ':' (config), so the name is unambiguous.
    return f"batch-{kind}:{upstream}:{ref}"


def _opt(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _tags(rest: list[object]) -> Mapping[str, str]:
    found = rest[0] if rest else None
    if not isinstance(found, dict):
        return NO_TAGS
    return frozen({str(k): str(v) for k, v in found.items()})
