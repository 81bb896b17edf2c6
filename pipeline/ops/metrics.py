"""Every Prometheus metric, defined in one place, in a registry of its own.

Names and labels are part of the public contract (dashboards depend on them).
Each gauge says how `worker --processes N` combines the processes' values
(pipeline/ops/multiproc.py): sums for queues and backlogs, the max of figures every
process reads from shared state, one sample per process for readiness.
No label ever carries a key, a secret or prompt text: only partner ids,
statuses, reasons and classes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Fine enough for a meaningful p99 anywhere from 50 ms to 60 s (each step at
#: most 1.5x the one before), coarse beyond.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.675, 1, 1.5, 2.25,
    3.375, 5, 7.5, 11, 16, 24, 36, 54, 60, 120, 300,
)  # fmt: skip


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
            "claude_partner_queue_depth",
            "Requests waiting in the worker",
            ["partner"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.backlog = Gauge(
            "claude_partner_backlog_records",
            "Records in the partner's request topic not yet committed by the group "
            "(this worker's partitions: sum over workers)",
            ["partner"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.budget_used = Gauge(
            "claude_partner_budget_used_ratio",
            "Fraction of the partner's budget spent this period (budget: tokens per UTC "
            "day, usd per UTC month); the same on every worker",
            ["partner", "budget"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.rate_limited = Counter(
            "claude_partner_rate_limited",
            "Claude answered 429 (rate limited) to a call for the partner",
            ["partner"],
            registry=r,
        )
        self.ratelimit_remaining = Gauge(
            "claude_upstream_ratelimit_remaining",
            "Claude's last reported remaining capacity",
            ["resource"],
            multiprocess_mode="livemin",
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
            multiprocess_mode="liveall",
            registry=r,
        )
        self.circuit_open = Gauge(
            "claude_upstream_circuit_open",
            "1 while the upstream key's circuit is open (an outage: one probe per backoff step)",
            ["key"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.registry_ignored = Counter(
            "claude_registry_records_ignored",
            "claude.partners records a worker refused to apply (unsigned, older, malformed): "
            "each is logged with its offset and why",
            registry=r,
        )
        self.duplicates = Counter(
            "claude_partner_duplicates",
            "Later copies of a request_id, left as audit dead letters (never served again)",
            ["partner"],
            registry=r,
        )
        self.misplaced = Counter(
            "claude_partner_misplaced",
            "Signed records in a partition (or under a key) their request_id does not put "
            "them in: a producer's partitioner or key is wrong, or a replay was moved",
            ["partner"],
            registry=r,
        )
        self.response_cache = Counter(
            "claude_partner_response_cache",
            "Response-cache lookups of requests that may be cached, by result: hit, miss",
            ["partner", "result"],
            registry=r,
        )
        self.batch_open = Gauge(
            "claude_batch_open",
            "Message Batches this worker submitted (or is submitting) and has not answered",
            registry=r,
        )
        self.batch_waiting = Gauge(
            "claude_batch_waiting_requests",
            "priority: batch requests handed over and waiting for their batch to close",
            registry=r,
        )
        self.batch_turnaround = Histogram(
            "claude_batch_turnaround_seconds",
            "From a batch's submission to its results read",
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
            registry=r,
        )
        self.batch_requests = Counter(
            "claude_batch_requests",
            "Batch results by what they led to: publish, interactive, reject, expire",
            ["partner", "action"],
            registry=r,
        )
