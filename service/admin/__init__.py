"""The operator's side of the proxy: health, readiness, ``/metrics`` and the admin API
(``api.py``), and the CLI's readers of a running proxy (``client.py``).

May import: ``budgets`` (its views) and the shared top-level modules.
"""
