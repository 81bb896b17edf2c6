"""Everything that speaks Kafka.

The Faust app and the one adapter that touches Faust's and aiokafka's private
names (app, faustadapter, fetchlanes, lanes, pausing, crcs); confluent-kafka
clients for the CLI and admin paths (clients, admin, acls); the durable state
log and its transactional writer (statelog, outbox); following the compacted
registry (follower); measuring lag; where keyed records belong (placement,
homes). May import the vocabulary, `lifecycle.state`, `security`; never `dev`.
"""
