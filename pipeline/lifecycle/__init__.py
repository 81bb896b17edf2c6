"""A request's way through the worker, from a record Kafka delivered to its outcome.

reception (a record becomes a request, an outcome, or nothing) -> intake (decode,
verify, bound, admit) -> backlog and scheduler (fair queues per upstream key) ->
admission and picker (which request may go now) -> attempt (one call to Claude)
-> completion and outcomes (the records an end publishes) ; dispatch runs the
loop over them. Pure where it can be: no module here opens a socket. May import
`pipeline`'s vocabulary (errors, config, records, schemas, partners), `limits`,
`upstream`, `security` and `ops.metrics`; never `kafka` (the worker wires Kafka
in) or `dev`.
"""
