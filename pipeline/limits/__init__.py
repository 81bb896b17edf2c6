"""What a request may spend and when: rate limits, budgets' prices, token counts,
the circuit breaker and the one retry policy.

Pure and clocked by an injected clock: no I/O, no Kafka, no SDK. Imports nothing
of the pipeline but its vocabulary (errors, partners).
"""
