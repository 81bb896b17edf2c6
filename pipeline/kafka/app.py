"""create_app(settings): the Faust app that frames the worker, with no Kafka of its own.

Faust gives the worker its frame: the service tree that starts and stops in
order, signal handling, `faust` CLI compatibility. Its Kafka path does not carry
requests any more: consuming and producing run on librdkafka
(`pipeline.kafka.consumer`, `pipeline.kafka.producer`), whose threads work
outside the GIL. Measured before the move (bench clients, bench partners):
librdkafka consumed a request for 0.058 CPU ms against aiokafka's 0.752, and
with 1,000 partners a bare librdkafka consumer's p50 was 25.5 ms against
aiokafka's 99.9. Faust's own `confluent://` driver was not the way: it wires no
partition assignor, hashes keys with Python's `hash()`, passes no SASL or SSL
settings to librdkafka and has no transactions.

So the app boots without Kafka (`NoKafka`): no Faust consumer, producer or
conductor joins the group or opens a connection.
"""

from __future__ import annotations

import os
import socket

import faust
from faust.app.base import BootStrategy

from pipeline.config import Settings


class NoKafka(BootStrategy):
    """Faust's services without its Kafka clients and web server."""

    enable_kafka = False
    enable_web = False


class FrameApp(faust.App):
    BootStrategy = NoKafka


def create_app(settings: Settings) -> faust.App:
    return FrameApp(
        settings.group_id,
        # named, never connected to (`NoKafka`)
        broker=f"kafka://{settings.bootstrap_servers.split(',')[0].strip()}",
        web_enabled=False,
        # Faust names a worker by URL; ours are told apart by process.
        canonical_url=f"http://{socket.gethostname()}.pid{os.getpid()}.invalid:6066",
        store="memory://",
    )
