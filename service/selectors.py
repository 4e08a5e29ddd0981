"""Which calls a budget or a rate limit covers: its selectors.

A selector set (``config.Selectors``) covers a call when every selector it sets matches:
``project``, ``upstream``, ``model`` (the model the caller asked for, case-insensitive),
``key`` (the virtual key's name: its ``name`` in ``keys``, else ``project#index``) and
``tags`` (every ``key: value`` given is among the call's tags). A value with ``*``, ``?``
or ``[`` is a glob (``model: "gpt-5*"``, ``tags: {feature: "search-*"}``).

A ``Selector`` never changes; thread-safe. ``SelectorIndex`` finds the items (budgets,
limits) covering a call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Generic, Protocol, TypeVar

from spendgate.config import Selectors
from spendgate.tags import NO_TAGS

FIELDS = ("upstream", "project", "model", "key")
_GLOB = frozenset("*?[")

Tags = Mapping[str, str]


def _is_glob(value: str) -> bool:
    return bool(_GLOB & set(value))


class Selector:
    """The selectors of one budget or limit, compiled once."""

    __slots__ = ("_fields", "_tags")

    def __init__(self, config: Selectors) -> None:
        self._fields = [(field, value.lower() if field == "model" else value, _is_glob(value))
                        for field in FIELDS
                        if (value := getattr(config, field)) is not None]
        self._tags = [(k, v, _is_glob(v)) for k, v in (config.tags or {}).items()]

    @property
    def uses_tags(self) -> bool:
        return bool(self._tags)

    def matches(self, upstream: str, project: str, model: str | None, key: str,
                tags: Tags = NO_TAGS) -> bool:
        """Every selector set matches; ``model`` None: whatever the model (its selector is
        not consulted), for a call whose model could not be read."""
        values = {"upstream": upstream, "project": project, "model": (model or "").lower(),
                  "key": key}
        if not all((f == "model" and model is None)
                   or (fnmatchcase(values[f], v) if glob else values[f] == v)
                   for f, v, glob in self._fields):
            return False
        for name, want, glob in self._tags:
            have = tags.get(name)
            if have is None or not (fnmatchcase(have, want) if glob else have == want):
                return False
        return True

    @staticmethod
    def describe(config: Selectors) -> dict[str, str]:
        """The selectors set, as the admin API shows them (a tag as ``tag:KEY``)."""
        shown = {f: str(getattr(config, f)) for f in FIELDS if getattr(config, f) is not None}
        shown.update({f"tag:{k}": v for k, v in (config.tags or {}).items()})
        return shown


def model_glob_matches(patterns: tuple[str, ...], model: str) -> bool:
    """Whether ``model`` is one of ``patterns`` (lower-cased globs, as ``Selector`` keeps a
    model selector): the model test of a budget, for a virtual key's ``models``."""
    wanted = model.lower()
    return any(fnmatchcase(wanted, pattern) for pattern in patterns)


class Selected(Protocol):
    """Anything covering calls through a ``Selector`` (a budget, a rate limit)."""

    @property
    def selector(self) -> Selector: ...


S = TypeVar("S", bound=Selected)
_MEMO_MAX = 4096


class SelectorIndex(Generic[S]):
    """Which of ``items`` cover a call. Items without tag selectors are memoised per
    (upstream, project, model, key), bounded against floods of made-up names; the few with
    tag selectors are asked each time (a call's tags are free-form: no memo could bound them).
    Thread-safe (a lost memo write only costs a recomputation)."""

    def __init__(self, items: Sequence[S]) -> None:
        self._plain = tuple(i for i in items if not i.selector.uses_tags)
        self._by_tags = tuple(i for i in items if i.selector.uses_tags)
        self._memo: dict[tuple[str, str, str, str], tuple[S, ...]] = {}

    def match(self, upstream: str, project: str, model: str, key: str,
              tags: Tags = NO_TAGS) -> tuple[S, ...]:
        memo_key = (upstream, project, model, key)
        found = self._memo.get(memo_key)
        if found is None:
            found = tuple(i for i in self._plain
                          if i.selector.matches(upstream, project, model, key))
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[memo_key] = found
        if self._by_tags and tags:
            found += tuple(i for i in self._by_tags
                           if i.selector.matches(upstream, project, model, key, tags))
        return found

    def any_model(self, upstream: str, project: str, key: str,
                  tags: Tags = NO_TAGS) -> tuple[S, ...]:
        """The items covering a call whatever its model (one whose body names none that can
        be read: its ``model`` selectors are not consulted). Not memoised: such calls are
        rare."""
        return tuple(i for i in (*self._plain, *self._by_tags)
                     if i.selector.matches(upstream, project, None, key, tags))
