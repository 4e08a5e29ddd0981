"""The hot path: route -> admit -> reserve -> forward -> stream back -> hand off.

Everything here runs on the event loop, per call, and does the minimum: it checks the
``Host`` and ``Origin`` the call came with (``exposure``), authenticates and attributes it
from its headers before reading a body, parses the body once (through ``providers``), asks
the rate limiter and the budget gate (Protocols defined here, implemented by ``limits`` and
``budgets``), forwards with the ``upstream`` client and hands one ``records.CallOutcome``
to the record pipeline after the caller has its last byte.
``server.py`` is the HTTP/1.1 protocol the app is served with (uvicorn's, with request heads
bounded in size and time); requests it refuses never reach the app.

May import: ``providers``, ``upstream``, and the shared top-level modules. Never
``accounting``, ``budgets``, ``limits`` or ``exporters``: they are reached through what
``app`` passes in.
"""
