"""A partner's whole integration: sign and send one request, then read its response.

Needs only confluent-kafka, fastavro and the schemas/ directory (run it from the
repository root). ACME_SECRET holds the partner's signing secret.
"""

import hashlib
import hmac
import io
import json
import os
import time
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer

kafka = {"bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")}
partner, secret = os.environ.get("PARTNER", "acme"), os.environ["ACME_SECRET"].encode()


def load(name):  # Avro single-object encoding: C3 01, the 8-byte schema fingerprint, the body
    parsed = fastavro.parse_schema(json.loads(Path(f"schemas/{name}.avsc").read_text()))
    pcf = fastavro.schema.to_parsing_canonical_form(parsed)
    return parsed, b"\xc3\x01" + bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))


request_schema, header = load("ClaudeRequest")
request = {
    "request_id": str(uuid.uuid4()),
    "partner_id": partner,
    "model": "claude-haiku-4-5",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Hello, Claude"}],
    "created_at_ms": int(time.time() * 1000),
}
body = io.BytesIO()
fastavro.schemaless_writer(body, request_schema, request)
value, ts = header + body.getvalue(), str(int(time.time()))
signature = hmac.new(secret, ts.encode() + b"." + value, hashlib.sha256).hexdigest()
headers = {"x-partner-id": partner, "x-timestamp": ts, "x-signature": signature}
producer = Producer({**kafka, "partitioner": "murmur2_random"})  # Kafka's default, as Java's
producer.produce(
    f"claude.requests.{partner}", key=request["request_id"], value=value, headers=headers
)
producer.flush()

response_schema, _ = load("ClaudeResponse")
group = {"group.id": f"{partner}.example", "auto.offset.reset": "earliest"}
consumer = Consumer({**kafka, **group, "session.timeout.ms": 6000})
consumer.subscribe([f"claude.responses.{partner}"])
while (msg := consumer.poll(60)) is not None:
    if msg.error() is None and msg.key() == request["request_id"].encode():
        response = fastavro.schemaless_reader(io.BytesIO(msg.value()[10:]), response_schema)
        print(response["status"], response["content"] or response["error_message"])
        break
consumer.close()
