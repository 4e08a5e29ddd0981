"""Virtual keys from a file (``keys_file: PATH``), so a secret store can mount them.

The file holds the same list as the config's ``keys`` (``[{key, project, name, models,
upstreams, expires, max_reserve_usd, tags}, ...]``), as YAML, or JSON (a ``.json`` name is read
as JSON; any other as YAML, which reads JSON too). Its text is taken literally: no
``${VAR}`` interpolation (a secret store writes the secrets themselves, and a secret may
hold ``${``). An empty file is a problem, not "no keys" (a file caught half-written must not
lock every caller out, or in): write ``[]`` for none. A relative path is relative to the
working directory, as ``pricing.catalog`` and ``store.url`` are.

``config`` reads it with the config file, at start and on every SIGHUP reload: a file that
is missing or bad fails that load as the config itself would (at start: no start; on reload:
the running keys stay, the problem logged and counted). Problems never quote the file's
content: it holds secrets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def read_keys_file(path: str) -> tuple[list[Any], list[str]]:
    """(the file's entries, problems): entries only when there are no problems. Each
    problem is one ``keys_file: message`` line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        return [], [f"keys_file: {path}: cannot read ({error.strerror or error})"]
    except UnicodeDecodeError:
        return [], [f"keys_file: {path}: not UTF-8 text"]
    if not text.strip():
        return [], [f"keys_file: {path}: empty (write [] for no keys)"]
    try:
        data = json.loads(text) if path.lower().endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        # The parser's message may quote the line it stopped at: a secret. Only where.
        return [], [f"keys_file: {path}: not valid {_format(path)}{_where(error)}"]
    if not isinstance(data, list):
        return [], [f"keys_file: {path}: must be a list of keys ([{{key, project}}, ...]), "
                    f"as the config's keys"]
    return data, []


def _format(path: str) -> str:
    return "JSON" if path.lower().endswith(".json") else "YAML"


def _where(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f" (line {error.lineno}, column {error.colno})"
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        return f" (line {mark.line + 1}, column {mark.column + 1})"
    return ""
