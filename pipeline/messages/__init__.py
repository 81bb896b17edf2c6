"""The Messages API on the wire: params <-> ClaudeRequest, response <-> ClaudeResponse.

A request through Kafka must be the same call as ``client.messages.create(**params)``,
and its response the same `Message`. Avro types what is stable (content blocks,
tools, tool_choice, thinking, cache_control, usage), so analytics can read it;
what is arbitrary JSON (a tool's ``input_schema``, a tool_use ``input``) travels as
a JSON string; a block whose kind the schema does not type, or that carries keys
the schema lacks, travels whole as an ``OtherBlock`` (its JSON), so nothing the
API accepts is lost and nothing new needs a schema change first. Request-level
parameters the schema does not know yet travel in ``extra_params_json``, which can
never set a governed parameter (see `GOVERNED`).

Records use fastavro's tuple notation for unions of records: ``(full_name, fields)``.
`pipeline.schemas.Codec` decodes into the same shape.

Normalisations, each documented in the README ("What a request can carry"): a key
whose value is null is the same as an absent key; an empty ``stop_sequences`` list
is the same as none; ``stream: false`` is the default. Everything else the wire
cannot carry raises `WireError` (a ValueError) naming the key.
"""

from pipeline.messages.governance import (
    BETA_PARAMS,
    CARRIED,
    GOVERNED,
    REFUSED,
    SDK_OPTIONS,
    TYPED_PARAMS,
    betas_field,
)
from pipeline.messages.params import fields_to_params, json_body, walk_blocks
from pipeline.messages.request import params_to_fields
from pipeline.messages.response import message_from_record, response_fields, usage_fields
from pipeline.messages.values import MAX_JSON_DEPTH, NS, WireError, dump_json, json_depth, load_json

__all__ = [
    "BETA_PARAMS",
    "CARRIED",
    "GOVERNED",
    "MAX_JSON_DEPTH",
    "NS",
    "REFUSED",
    "SDK_OPTIONS",
    "TYPED_PARAMS",
    "WireError",
    "betas_field",
    "dump_json",
    "fields_to_params",
    "json_body",
    "json_depth",
    "load_json",
    "message_from_record",
    "params_to_fields",
    "response_fields",
    "usage_fields",
    "walk_blocks",
]
