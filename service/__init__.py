"""spendgate: an LLMOps sidecar that forwards, counts, prices and budgets every LLM call.

Data flow, one module per step::

    request -> routing (routing.py) -> admit: auth + attribution (attribution.py)
            -> reserve the worst case in block budgets (budgets.py, ledger.py)
            -> forward and stream back (proxy.py, upstream.py, sse.py)
            -> extract usage (providers/) -> estimate what is missing (tokens.py)
            -> price (pricing.py) -> one immutable UsageRecord (records.py)
            -> every sink (exporters/) via the RecordPipeline (pipeline.py),
               the budget ledger's included (settlement.py)

Everything after "stream back" runs once the caller has its bytes.
"""

__version__ = "0.1.0"
