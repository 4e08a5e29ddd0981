"""Accounting: from a finished ``CallOutcome`` to its immutable ``UsageRecord``, and on to
every sink.

``pipeline.py`` is the queue and worker thread; ``builder.py`` reads usage (through
``providers``), estimates what the upstream did not report (``tokens.py``) and prices the
call (``pricing.py``: catalog in ``data/`` and resolution; ``rates.py``: tiers, fees and the
exact cost); ``batches.py`` remembers who created each batch, so its results are accounted
once, per line, for its creator; ``gpu.py`` prices self-hosted GPU upstreams' calls by
allocating their hourly bill when each interval closes. Nothing here runs on the event loop.
May import: ``providers``, ``exporters.base`` (the sink interface), ``exporters.exact``
(exact money counters), and the shared top-level modules. Never ``hotpath`` or ``budgets``.
"""
