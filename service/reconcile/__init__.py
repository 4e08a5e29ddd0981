"""Reconciliation: what the ledger measured against what the provider will invoice.

Beside the data flow, like ``admin/``: it reads the providers' own usage and cost APIs with
an organization admin key (one file per provider, ``openai.py`` and ``anthropic.py``, behind
``base.UsageSource``) and the ledger's daily history (``budgets.store``: per UTC day,
upstream and model, spend and tokens by type), and compares them per upstream x day x model
(``compare.py``). ``spendgate reconcile`` prints the comparison; in ``serve``, ``job.py``
repeats it every ``reconcile.interval_s`` and exports the ``spendgate_provider_*`` and
``spendgate_reconciliation_*`` metrics.

Imports: the shared vocabulary (``config``, ``errors``, ``money``, ``usage``); in ``serve``
the ledger's history reaches it as a function (``HistoryReader``) given by the composition
root; only ``command.py`` (``spendgate reconcile``, a process of its own) opens the ledger's
store itself, through ``budgets.store``, the one stage it may import.
An admin API failure is a ``ReconcileError`` (status and endpoint only: never the key,
never the provider's error body), logged and counted, and never touches a call.
"""
