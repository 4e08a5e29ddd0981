"""``spendgate demo`` and ``spendgate simulate``: a simulated provider, traffic, a summary.

``runner.py`` starts the simulated provider (``simulator/``), the real proxy in a child
process and the traffic (``traffic.py``), and draws the summary (``summary.py``) from the
proxy's own ``/metrics``. Beside the flow: nothing of the proxy imports this package.

May import: ``providers`` and ``accounting`` (the simulator prices and speaks their wire
formats), the shared vocabulary; the proxy itself only as a child process.
"""
