#!/usr/bin/env python3
"""``mypy -p spendgate`` on this checkout, with errors reported at their source paths.

mypy names a module by its folders, and no folder of the checkout is named ``spendgate``
(pyproject.toml maps ``service/`` and ``exporters/``; ``sourcetree.py``). So the package
is laid out as the wheel lays it, in ``.typecheck/`` (git-ignored; files copied with their
times, so mypy's cache stays warm), mypy checks it there, and each path it prints is turned
back into the checkout's own (``.typecheck/spendgate/exporters/x.py`` -> ``exporters/x.py``).

    python scripts/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from sourcetree import package_dirs

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".typecheck"


def lay_out() -> dict[str, str]:
    """Copy each mapped package where the wheel puts it; returns build prefix -> source."""
    shutil.rmtree(BUILD, ignore_errors=True)
    back: dict[str, str] = {}
    # Parents first, so a nested mapping (spendgate.exporters) lands inside its parent.
    for name, source in sorted(package_dirs(ROOT).items()):
        target = BUILD.joinpath(*name.split("."))
        shutil.copytree(source, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        back[str(target.relative_to(ROOT)) + os.sep] = str(source.relative_to(ROOT)) + os.sep
    return back


def main(argv: list[str]) -> int:
    back = lay_out()
    env = {**os.environ, "MYPYPATH": str(BUILD)}
    done = subprocess.run([sys.executable, "-m", "mypy", "-p", "spendgate", *argv], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    # Longest prefix first: spendgate/exporters/ before spendgate/.
    pattern = re.compile("|".join(re.escape(p) for p in sorted(back, key=len, reverse=True)))
    for stream, text in ((sys.stdout, done.stdout), (sys.stderr, done.stderr)):
        stream.write(pattern.sub(lambda m: back[m.group(0)], text))
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
