"""Budgets: which calls a budget covers, admission, the ledger, alerts and budget metrics.

``book.py`` (budgets and which calls they cover), ``windows.py`` (calendar windows and the
clock), ``gate.py`` (the hot path's worst-case reservation), ``ledger.py`` (the store behind a
breaker, written in bulk, spend kept while it is down), ``journal.py`` (that spend on local
disk until the store has it), ``pending.py`` (unsent spend, summed), ``settlement.py`` (the
ledger's record sink: exact cost of each call into its budgets), ``alerts.py`` (webhooks),
``metrics.py`` (ledger-backed gauges), ``store/`` (one backend per file behind
``store.base.Store``) and ``manager.py``, which wires them for one process.
May import: ``accounting`` (prices, tokenizer), ``providers.base``, ``exporters.base`` and the
shared top-level modules. Never ``hotpath``.
"""
