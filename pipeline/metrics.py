"""Every Prometheus metric, defined in one place, in a registry of its own.

Names and labels are part of the public contract (dashboards depend on them).
No label ever carries a key, a secret or prompt text: only partner ids,
statuses, reasons and classes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "claude_partner_requests",
            "Requests by outcome status",
            ["partner", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "claude_partner_request_duration_seconds",
            "End to end: from the partner's created_at to the published outcome",
            ["partner"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "claude_partner_upstream_duration_seconds",
            "One Claude call",
            ["partner"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "claude_partner_tokens",
            "Tokens by kind: input, output, cache_read, cache_write",
            ["partner", "kind"],
            registry=r,
        )
        self.cost = Counter("claude_partner_cost_usd", "Spend in USD", ["partner"], registry=r)
        self.errors = Counter(
            "claude_partner_errors",
            "Failed Claude calls by class: 4xx, 5xx, timeout, connection",
            ["partner", "class"],
            registry=r,
        )
        self.retries = Counter(
            "claude_partner_retries", "Retried Claude calls", ["partner"], registry=r
        )
        self.dlq = Counter(
            "claude_partner_dlq", "Dead letters by reason", ["partner", "reason"], registry=r
        )
        self.queue_depth = Gauge(
            "claude_partner_queue_depth", "Requests waiting in the worker", ["partner"], registry=r
        )
        self.ratelimit_remaining = Gauge(
            "claude_upstream_ratelimit_remaining",
            "Claude's last reported remaining capacity",
            ["resource"],
            registry=r,
        )
        self.key_rejected = Counter(
            "claude_partner_key_rejected",
            "Claude refused a partner's API key (401/403): revoked or without permission",
            ["partner"],
            registry=r,
        )
        self.ready = Gauge(
            "claude_worker_ready",
            "1 while the worker consumes: partitions assigned and recovered; 0 while it "
            "starts, rebalances or drains (what /readyz says)",
            registry=r,
        )
        self.circuit_open = Gauge(
            "claude_upstream_circuit_open",
            "1 while the upstream key's circuit is open (an outage: one probe per backoff step)",
            ["key"],
            registry=r,
        )
        self.duplicates = Counter(
            "claude_partner_duplicates",
            "Later copies of a request_id, left as audit dead letters (never served again)",
            ["partner"],
            registry=r,
        )
