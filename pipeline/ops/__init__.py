"""What operators see and run: Prometheus metrics and gauges, the health
endpoint, JSON logs, dead-letter tools and the usage report, the deploy files,
and `worker --processes N`.

May import every runtime package; never `dev`.
"""
