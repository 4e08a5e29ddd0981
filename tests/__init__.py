"""spendgate's tests: real servers, real clients, this checkout's code.

Importing this package makes ``import spendgate`` load the checkout the tests live in, not
an installed copy (``scripts/sourcetree.py``); ``conftest.spendgate_command`` runs its CLI
the same way, so every test exercises exactly the tree under test.
"""

from pathlib import Path

from scripts import sourcetree

sourcetree.install(Path(__file__).resolve().parent.parent)
