"""The Avro wire contract: load `schemas/*.avsc` once, encode, decode, detect framing.

Two framings, told apart by their first bytes:

- Avro single-object encoding (the default, no registry needed): ``C3 01``,
  the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema, the
  body. The reader finds the writer schema by fingerprint among every version
  in `schemas/` (older versions live in `schemas/v1/`, ...), then resolves it
  to the current reader schema, so old writers and new readers interoperate.
- Confluent wire format (``00``, 4-byte big-endian schema id, body) when a
  schema registry is configured; ids are resolved through the registry.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from pipeline.avrowriter import Unsure, compile_writer
from pipeline.errors import ConfigError, SchemaError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
NAMESPACE = "claude.pipeline"
RECORD_NAMES = ("ClaudeRequest", "ClaudeResponse", "UsageRecord", "DeadLetter", "PartnerConfig")


def schemas_dir() -> Path:
    """`schemas/` of the source tree, or the copy a wheel installs under share/."""
    for candidate in (
        Path(__file__).resolve().parent.parent / "schemas",
        Path(sys.prefix) / "share" / "claude-partner-pipeline" / "schemas",
    ):
        if (candidate / "ClaudeRequest.avsc").is_file():
            return candidate
    raise ConfigError("cannot find the schemas/ directory with the *.avsc files")


@dataclass(frozen=True)
class SchemaVersion:
    name: str  # short record name, e.g. "ClaudeRequest"
    source: str  # the .avsc path it came from
    text: str  # canonical JSON, what a registry stores
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO


def _load(path: Path) -> SchemaVersion:
    raw = json.loads(path.read_text())
    parsed = parse_schema(raw, named_schemas={})
    pcf = to_parsing_canonical_form(parsed)
    return SchemaVersion(
        name=raw["name"],
        source=str(path),
        text=json.dumps(raw, separators=(",", ":")),
        parsed=parsed,
        fingerprint=bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO")),
    )


class SchemaStore:
    """Every schema version on disk: the current ones and their ancestors."""

    def __init__(self, directory: Path | None = None) -> None:
        root = directory or schemas_dir()
        self.current: dict[str, SchemaVersion] = {}
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}
        self.versions: dict[str, list[SchemaVersion]] = {}
        for path in sorted(root.glob("*.avsc")):
            version = _load(path)
            self.current[version.name] = version
        for path in sorted(root.glob("v*/*.avsc")):
            version = _load(path)
            self.versions.setdefault(version.name, []).append(version)
            self.by_fingerprint[version.fingerprint] = version
        for version in self.current.values():
            self.versions.setdefault(version.name, []).append(version)
            self.by_fingerprint[version.fingerprint] = version
        missing = set(RECORD_NAMES) - set(self.current)
        if missing:
            raise ConfigError(f"schemas missing from {root}: {', '.join(sorted(missing))}")


class SchemaRegistry(Protocol):
    """What the codec needs from a Confluent-compatible schema registry."""

    def id_for(self, subject: str, schema_text: str) -> int: ...

    def schema_for(self, schema_id: int) -> str: ...


class ConfluentRegistry:
    """`confluent_kafka.schema_registry` with caches: one HTTP call per subject or id."""

    def __init__(self, url: str) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient({"url": url})
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}

    def id_for(self, subject: str, schema_text: str) -> int:
        key = (subject, schema_text)
        if key not in self._ids:
            from confluent_kafka.schema_registry import Schema

            self._ids[key] = self._client.register_schema(subject, Schema(schema_text, "AVRO"))
        return self._ids[key]

    def schema_for(self, schema_id: int) -> str:
        if schema_id not in self._schemas:
            schema = self._client.get_schema(schema_id)
            self._schemas[schema_id] = str(schema.schema_str)
        return self._schemas[schema_id]

    def close(self) -> None:
        """Close the HTTP connections it keeps alive."""
        self._client.close()


#: How long a record waits for the registry to resolve a new schema id, and how
#: long an id it could not resolve is refused without asking again.
REGISTRY_TIMEOUT_S = 5.0
REGISTRY_RETRY_S = 30.0


class Codec:
    """Encode with the configured framing; decode either framing."""

    def __init__(self, store: SchemaStore | None = None, registry: SchemaRegistry | None = None):
        self.store = store or SchemaStore()
        self.registry = registry
        self._registry_schemas: dict[int, Any] = {}
        #: Ids the registry did not resolve: (until when, why), so that an unknown
        #: id costs one lookup per REGISTRY_RETRY_S, not one per record.
        self._registry_missing: dict[int, tuple[float, str]] = {}
        #: A compiled writer per record name (pipeline/avrowriter.py), None where
        #: the schema has a type it does not write.
        self._writers = {name: compile_writer(v.parsed) for name, v in self.store.current.items()}

    def encode(self, name: str, record: Mapping[str, Any], topic: str | None = None) -> bytes:
        version = self.store.current[name]
        if self.registry is not None:
            subject = f"{topic}-value" if topic else f"{NAMESPACE}.{name}"
            schema_id = self.registry.id_for(subject, version.text)
            header = CONFLUENT_MAGIC + struct.pack(">I", schema_id)
        else:
            header = SINGLE_OBJECT_MAGIC + version.fingerprint
        writer = self._writers.get(name)
        if writer is not None:
            try:
                return header + writer(record)
            except Unsure:
                pass  # fastavro writes it, or says why not
        buf = io.BytesIO()
        buf.write(header)
        try:
            fastavro.schemaless_writer(buf, version.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise SchemaError(f"cannot encode {name}: {exc}") from exc
        return buf.getvalue()

    def close(self) -> None:
        """Close the registry client's connections, if there is one."""
        close = getattr(self.registry, "close", None)
        if close is not None:
            close()

    def warm(self, outputs: list[tuple[str, str]]) -> None:
        """Register (name, topic) output schemas now, so `encode` never waits on HTTP."""
        if self.registry is None:
            return
        for name, topic in outputs:
            self.registry.id_for(f"{topic}-value", self.store.current[name].text)

    def decode(self, name: str, data: bytes) -> dict[str, Any]:
        """Decode `data` as the current version of `name`; SchemaError says why not."""
        writer_schema, offset = self.framing(name, data)
        return read_body(name, writer_schema, self.store.current[name].parsed, data, offset)

    def framing(self, name: str, data: bytes) -> tuple[Any, int]:
        """The writer's schema of `data` and where its Avro body starts (cheap: the
        header only); SchemaError when the framing or the schema is wrong."""
        if data[:2] == SINGLE_OBJECT_MAGIC:
            writer = self.store.by_fingerprint.get(data[2:10])
            if writer is None:
                raise SchemaError(f"unknown schema fingerprint {data[2:10].hex()}")
            if writer.name != name:
                raise SchemaError(f"expected a {name}, got a {writer.name}")
            return writer.parsed, 10
        if data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            schema_id = struct.unpack(">I", data[1:5])[0]
            return self._registry_schema(schema_id), 5
        raise SchemaError("not Avro: no single-object or Confluent framing")

    def _registry_schema(self, schema_id: int) -> Any:
        parsed = self._registry_schemas.get(schema_id)
        if parsed is None:
            if self.registry is None:
                raise SchemaError(
                    f"Confluent-framed record (schema id {schema_id}) but no registry"
                )
            missing = self._registry_missing.get(schema_id)
            if missing is not None and time.monotonic() < missing[0]:
                raise SchemaError(missing[1])
            try:
                text = self.registry.schema_for(schema_id)
                parsed = parse_schema(json.loads(text), named_schemas={})
            except Exception as exc:
                why = f"schema id {schema_id} not found in the registry"
                self._registry_missing[schema_id] = (time.monotonic() + REGISTRY_RETRY_S, why)
                raise SchemaError(why) from exc
            self._registry_schemas[schema_id] = parsed
            self._registry_missing.pop(schema_id, None)
        return parsed

    def needs_registry(self, data: bytes) -> bool:
        """Whether decoding `data` would ask the registry (an id not seen yet)."""
        return (
            self.registry is not None
            and data[:1] == CONFLUENT_MAGIC
            and len(data) >= 5
            and struct.unpack(">I", data[1:5])[0] not in self._registry_schemas
        )

    async def prefetch(self, data: bytes) -> None:
        """Resolve an unseen registry id off the event loop, so `decode` never blocks."""
        if self.needs_registry(data):
            schema_id = struct.unpack(">I", data[1:5])[0]
            try:
                async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                    await asyncio.to_thread(self._registry_schema, schema_id)
            except SchemaError:
                pass  # decode() reports it in context
            except TimeoutError:
                # decode() must not ask again on the event loop
                why = f"the schema registry did not answer for schema id {schema_id}"
                self._registry_missing[schema_id] = (time.monotonic() + REGISTRY_RETRY_S, why)


def read_body(
    name: str, writer_schema: Any, reader_schema: Any, data: bytes, offset: int
) -> dict[str, Any]:
    """The record in `data[offset:]`, written with `writer_schema` and read as
    `reader_schema`; SchemaError when it is corrupt. (Pure: the examiner process
    runs it too.)"""
    try:
        # Unions of several records (content blocks) decode as (full name, fields),
        # the tuple notation `encode` accepts: see pipeline/messages.py.
        result = fastavro.schemaless_reader(
            io.BytesIO(memoryview(data)[offset:]),
            writer_schema,
            reader_schema,
            return_record_name=True,
            return_record_name_override=True,
        )
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise SchemaError(f"corrupt {name}: {type(exc).__name__}") from exc
    if not isinstance(result, dict):
        raise SchemaError(f"corrupt {name}: not a record")
    return result
