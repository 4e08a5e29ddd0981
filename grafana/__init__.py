"""Grafana dashboards, Prometheus rules and Alertmanager config for spendgate.

Not part of the installed package: these modules only build and check the files
next to them (``python -m grafana.build_dashboards``).
"""
