"""Everything that speaks Kafka.

The Faust frame that starts no Kafka client (app); the request intake and the
worker's producer on librdkafka (consumer, poller, offsets, lanes, producer);
confluent-kafka clients for the CLI and admin paths (clients, admin, acls); the
durable state log and its transactional writer (statelog, outbox); following
the compacted registry (follower); measuring lag; where keyed records belong
(homes). May import the vocabulary, `lifecycle.state`, `security`; never `dev`.
"""
