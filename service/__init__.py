"""spendgate: an LLMOps sidecar that forwards, counts, prices and budgets every LLM call.

The data flow, one subpackage per stage::

    request -> Host it was sent to, route ....... hotpath/exposure.py, hotpath/routing.py
            -> admit: key, Origin, project, user, tags  hotpath/attribution.py, hotpath/exposure.py
               (headers only: no body is read before a call is admitted)
            -> rate limits ...................... limits/gate.py (through hotpath's RateLimiter)
            -> reserve the worst case ........... budgets/gate.py (through hotpath's BudgetGate)
            -> forward, stream back ............. hotpath/proxy.py, upstream/, providers/sse.py
    ---- the caller has its bytes; everything below runs in the record pipeline's thread ----
            -> extract usage .................... providers/ (one wire protocol per file)
            -> estimate what is missing, price .. accounting/ (tokens.py, pricing.py)
            -> one immutable UsageRecord ........ records.py, built by accounting/builder.py
            -> every sink ....................... exporters/ (Prometheus, OTel, usage log)
               and the budget ledger ............ budgets/settlement.py -> budgets/store/
               and the limits' corrections ...... limits/sink.py -> budgets/store/

Imports run one way: ``hotpath -> providers, upstream``; ``accounting -> providers``;
``budgets -> accounting``; ``limits -> budgets``; ``exporters -> records``; all of them ->
the shared vocabulary at the top (``config``, ``errors``, ``records``, ``usage``, ``money``,
``labels``, ``asgi``, ``selectors``, ``tags``).
``app.py`` is the one composition root: it builds every object with what it needs and is the
only module that imports every stage. ``admin/`` (health, metrics, admin API, console) and
``demo/`` (``spendgate demo`` and its simulated provider) sit beside the flow.
"""

__version__ = "0.1.0"
