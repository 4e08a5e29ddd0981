"""Rate limits: requests and tokens per sliding minute, and calls in flight, per selector.

``book.py`` (limits as configured, and which calls each covers), ``gate.py`` (the hot
path's admission, through hotpath's ``RateLimiter`` Protocol, and the slots' release when a
call ends) and ``sink.py`` (the record sink that corrects each call's token estimate with
its real usage). The counts live in the budget store (``budgets.store``: ``limit_*``
operations), so every replica sharing it shares each limit.

May import: ``budgets`` (the ledger and its store, the reservation's prompt bound),
``accounting`` (the catalog's output maxima), ``providers.base``, ``exporters.base`` and the
shared top-level modules. Never ``hotpath``.
"""
