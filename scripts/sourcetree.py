"""Import spendgate from a source checkout without installing it.

The wheel maps ``service/`` to the package ``spendgate`` and ``exporters/`` to
``spendgate.exporters`` (``tool.setuptools.package-dir`` in pyproject.toml). No directory of
the checkout is named ``spendgate``, so a ``sys.path`` entry cannot import it: ``install``
puts a finder applying the same mapping, read from that checkout's pyproject.toml, at the
front of ``sys.meta_path``, so the checkout's code wins over any installed copy. Tests and
benchmarks use it to run exactly the tree they belong to (or the one ``bench/run.py --src``
names); ``command`` is the argv that runs ``spendgate ARGS`` from a tree that way.

Standard library only: it runs before anything of spendgate can be imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve()


def package_dirs(root: Path) -> dict[str, Path]:
    """The checkout's package -> directory mapping, as setuptools applies it."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    mapping: dict[str, str] = project["tool"]["setuptools"]["package-dir"]
    return {name: (root / directory).resolve() for name, directory in mapping.items()}


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the mapped packages in their source directories; submodules follow their
    package's ``__path__`` as usual."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        where = self.dirs.get(fullname)
        if where is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, where / "__init__.py", submodule_search_locations=[str(where)])


def install(root: Path) -> None:
    """Make ``import spendgate`` load the source tree at ``root``. Idempotent; raises
    ``RuntimeError`` when another copy of spendgate is already imported."""
    dirs = package_dirs(root)
    loaded = sys.modules.get("spendgate")
    if loaded is not None:
        if Path(loaded.__file__ or "").resolve().parent != dirs["spendgate"]:
            raise RuntimeError(f"another spendgate is already imported: {loaded.__file__}")
        return
    if not any(isinstance(f, SourceFinder) and f.dirs == dirs for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFinder(dirs))


def command(root: Path, *args: str) -> list[str]:
    """``spendgate ARGS`` run from the source tree at ``root`` by this interpreter."""
    boot = ("import importlib.util as u, sys; "
            f"s = u.spec_from_file_location('sourcetree', {str(HERE)!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); "
            f"m.install(m.Path({str(root)!r})); "
            "from spendgate.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", boot, *args]
