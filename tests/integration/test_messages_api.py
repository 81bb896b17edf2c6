"""A request through Kafka is the same `client.messages.create(**params)` call, and its
response the same `Message`: the corpus through a running pipeline, compared with
what reached the upstream; bad input; older schema versions; large values; budgets."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import fastavro
import pytest

from pipeline.client import build_request, message_from_response, request_record
from pipeline.messages import NS
from pipeline.schemas import SINGLE_OBJECT_MAGIC, SchemaStore
from pipeline.security.signing import signed_headers
from tests import corpus
from tests.integration.stack import Key, Outcomes, Stack

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LIMIT = 2 * 1024 * 1024  # the worker's record limit in this module
BUDGET_USD = 0.06
WORKSPACE = "wrkspc_01fidelity"
BILLED_KEY = "sk-test-billed"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("messages-api"),
        sim_args=["--record", "2000", "--cache-min-tokens", "64", "--latency-ms", "2"],
        worker_env={"PIPELINE_MAX_RECORD_BYTES": str(LIMIT)},
    )
    try:
        s.add_partner("fidelity", betas=(corpus.MCP_BETA,), workspace_id=WORKSPACE)
        for pid in ("hostile", "legacy", "bulky"):
            s.add_partner(pid)
        s.add_partner("budgeted", monthly_budget_usd=BUDGET_USD)
        # a key of its own: the simulator's bill for it is this partner's alone
        s.add_partner("billed", api_key_ref=s.secret_file("billed.key", BILLED_KEY))
        s.start_worker()
        yield s
    finally:
        s.close()


def _send(stack: Stack, partner: str, record: dict[str, Any]) -> Key:
    stack.client(partner).send(record)
    return (partner, str(record["request_id"]))


def _wait(stack: Stack, keys: list[Key], timeout: float = 90.0) -> Outcomes:
    got = stack.outcomes({k[0] for k in keys}, lambda o: o.complete(keys), timeout)
    missing = [k for k in keys if k not in got.responses]
    assert not missing, f"no response for {missing[:5]}"
    return got


def test_the_corpus_reaches_claude_field_for_field_and_comes_back_as_the_same_message(
    stack: Stack,
) -> None:
    sent: dict[Key, dict[str, Any]] = {}
    run = uuid.uuid4().hex  # a prefix no earlier test cached: this one writes the cache
    for name, params in corpus.corpus().items():
        if name == "system_cache_5m_and_1h":
            params["system"][0]["text"] = f"[run {run}] " + params["system"][0]["text"]
        record = request_record(params, partner_id="fidelity", request_id=f"corpus-{name}")
        sent[_send(stack, "fidelity", record)] = params
    stack.client("fidelity").flush()
    got = _wait(stack, list(sent))
    exchanges = {e["response"]["id"]: e for e in stack.sim_exchanges()}
    for key, params in sent.items():
        (response,) = got.responses[key]
        assert response["status"] == "ok", (key, response["error_message"])
        exchange = exchanges[response["message_id"]]
        # the JSON body that reached the upstream is what the partner submitted, its
        # betas in the anthropic-beta header, in the Workspace the operator set
        betas = params.pop("betas", None)
        assert exchange["request"] == json.loads(json.dumps(params)), key
        assert exchange["headers"].get("anthropic-beta") == (",".join(betas) if betas else None)
        assert exchange["headers"]["anthropic-workspace-id"] == WORKSPACE
        # and the response record is the Message the upstream returned
        ours = anthropic.types.Message.model_validate(message_from_response(response))
        assert ours == anthropic.types.Message.model_validate(exchange["response"]), key
        (usage,) = got.usage[key]
        assert usage["input_tokens"] == exchange["response"]["usage"]["input_tokens"]
    by_name = {k[1].removeprefix("corpus-"): got.responses[k][0] for k in sent}
    kinds = {n: [b[0].removeprefix(NS) for b in r["blocks"]] for n, r in by_name.items()}
    assert kinds["thinking"] == ["ThinkingBlock", "TextBlock"]
    assert kinds["parallel_tool_calls"] == ["TextBlock", "ToolUseBlock", "ToolUseBlock"]
    assert by_name["tools_any"]["stop_reason"] == "tool_use"
    # max_tokens 0 pre-warms the cache: nothing generated, the cache write billed
    prewarm = by_name["cache_prewarm"]
    assert (prewarm["stop_reason"], prewarm["usage"]["output_tokens"]) == ("max_tokens", 0)
    assert prewarm["usage"]["cache_creation_input_tokens"] > 0
    assert got.usage[("fidelity", "corpus-cache_prewarm")][0]["cost_usd"] > 0
    # fast mode in the EU ran fast in the EU, and analytics see it; thinking is counted
    fast = got.usage[("fidelity", "corpus-fast_mode_in_the_eu")][0]
    assert (fast["speed"], fast["inference_geo"]) == ("fast", "eu")
    plain = got.usage[("fidelity", "corpus-stop_sequences")][0]
    assert (plain["speed"], plain["inference_geo"], plain["thinking_tokens"]) == (
        "standard", "global", None,
    )  # fmt: skip
    thought = got.usage[("fidelity", "corpus-thinking")][0]
    assert 0 < thought["thinking_tokens"] < thought["output_tokens"]
    mcp = exchanges[by_name["mcp_servers_beta"]["message_id"]]
    assert mcp["request"]["mcp_servers"][0]["url"] == "https://mcp.example.com/sse"
    assert mcp["headers"]["anthropic-beta"] == corpus.MCP_BETA
    cache = by_name["system_cache_5m_and_1h"]["usage"]["cache_creation"]
    assert cache["ephemeral_1h_input_tokens"] > 0
    assert cache["ephemeral_5m_input_tokens"] > 0
    one_hour = got.usage[("fidelity", "corpus-system_cache_5m_and_1h")][0]
    assert one_hour["cache_creation_1h_input_tokens"] == cache["ephemeral_1h_input_tokens"]


def _edit_first_block(record: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The record with fields of its first message's first block replaced (raw wire edits
    a partner library would refuse, as a hostile or buggy producer would write them)."""
    name, block = record["messages"][0]["content"][0]
    record["messages"][0]["content"][0] = (name, {**block, **fields})
    return record


def _tool_record(request_id: str, **edits: Any) -> dict[str, Any]:
    params = corpus.corpus()["tool_result_turn"]
    params["messages"] = [
        params["messages"][0],
        {"role": "assistant", "content": params["messages"][1]["content"][1:]},
        params["messages"][2],
    ]
    record = request_record(params, partner_id="hostile", request_id=request_id)
    name, block = record["messages"][1]["content"][0]
    record["messages"][1]["content"][0] = (name, {**block, **edits})
    return record


def test_bad_input_ends_as_a_dead_letter_naming_the_field_and_spares_good_traffic(
    stack: Stack,
) -> None:
    image = corpus.corpus()["base64_png"]
    deep = {"type": "object", "properties": {}}
    for _ in range(80):
        deep = {"type": "object", "properties": {"x": deep}}
    intake: dict[str, tuple[dict[str, Any], str]] = {
        "tool-input-not-json": (_tool_record("tool-input-not-json", input_json="{oops"), "input"),
        "extra-governs-model": (
            {
                **request_record(
                    corpus.corpus()["multi_turn_text"],
                    partner_id="hostile",
                    request_id="extra-governs-model",
                ),
                "extra_params_json": '{"model": "claude-opus-4-8"}',
            },
            "extra_params_json.model",
        ),
        "deep-schema": (
            request_record(
                {
                    **corpus.corpus()["tools_auto"],
                    "tools": [{"name": "deep", "input_schema": {"type": "object"}}],
                },
                partner_id="hostile",
                request_id="deep-schema",
            ),
            "tools[0].input_schema",
        ),
        "cache-ttl-24h": (
            _edit_first_block(
                request_record(
                    corpus.corpus()["pdf_document"],
                    partner_id="hostile",
                    request_id="cache-ttl-24h",
                ),
                cache_control={"type": "ephemeral", "ttl": "24h"},
            ),
            "cache_control.ttl",
        ),
        "beta-not-allowed": (
            request_record(
                corpus.corpus()["mcp_servers_beta"],
                partner_id="hostile",
                request_id="beta-not-allowed",
            ),
            f"betas: '{corpus.MCP_BETA}' is not allowed for this partner",
        ),
        "other-block-not-json": (
            {
                **request_record(
                    corpus.corpus()["multi_turn_text"],
                    partner_id="hostile",
                    request_id="other-block-not-json",
                ),
                "messages": [
                    {"role": "user", "content": [(NS + "OtherBlock", {"type": "x", "json": "[1,"})]}
                ],
            },
            "messages[0].content[0]",
        ),
    }
    name, tool = intake["deep-schema"][0]["tools"][0]
    intake["deep-schema"][0]["tools"][0] = (name, {**tool, "input_schema_json": json.dumps(deep)})
    upstream: dict[str, tuple[dict[str, Any], str]] = {
        "png-declared-jpeg": (
            _edit_first_block(
                request_record(image, partner_id="hostile", request_id="png-declared-jpeg"),
                source=(
                    NS + "Base64Source",
                    {"media_type": "image/jpeg", "data": corpus.png(8, 8)},
                ),
            ),
            "Image does not match the provided media type",
        ),
        "bmp-media-type": (
            _edit_first_block(
                request_record(image, partner_id="hostile", request_id="bmp-media-type"),
                source=(NS + "Base64Source", {"media_type": "image/bmp", "data": b"BM"}),
            ),
            "media_type: Input should be 'image/jpeg'",
        ),
        "unanswered-tool-result": (
            _tool_record("unanswered-tool-result", id="toolu_other"),
            "`tool_use` ids were found without `tool_result` blocks",
        ),
        "five-breakpoints": (
            request_record(
                {
                    **corpus.corpus()["multi_turn_text"],
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "text",
                                    "text": f"part {i}",
                                    "cache_control": {"type": "ephemeral"},
                                }
                                for i in range(5)
                            ],
                        }
                    ],
                },
                partner_id="hostile",
                request_id="five-breakpoints",
            ),
            "A maximum of 4 blocks with cache_control",
        ),
        "thinking-budget-500": (
            request_record(
                {
                    **corpus.corpus()["thinking"],
                    "thinking": {"type": "enabled", "budget_tokens": 500},
                },
                partner_id="hostile",
                request_id="thinking-budget-500",
            ),
            "budget_tokens: Input should be greater than or equal to 1024",
        ),
        "bad-tool-name": (
            request_record(
                {
                    **corpus.corpus()["tools_auto"],
                    "tools": [{"name": "get weather!", "input_schema": {"type": "object"}}],
                },
                partner_id="hostile",
                request_id="bad-tool-name",
            ),
            "String should match pattern",
        ),
        "choice-names-no-tool": (
            request_record(
                {
                    **corpus.corpus()["tools_tool"],
                    "tool_choice": {"type": "tool", "name": "launch_rocket"},
                },
                partner_id="hostile",
                request_id="choice-names-no-tool",
            ),
            "Tool 'launch_rocket' not found",
        ),
        "pdf-that-is-not": (
            _edit_first_block(
                request_record(
                    corpus.corpus()["pdf_document"],
                    partner_id="hostile",
                    request_id="pdf-that-is-not",
                ),
                source=(
                    NS + "Base64Source",
                    {"media_type": "application/pdf", "data": b"not a pdf"},
                ),
            ),
            "The PDF specified was not valid",
        ),
    }
    keys = [_send(stack, "hostile", rec) for rec, _ in (*intake.values(), *upstream.values())]
    good = [stack.send("hostile", f"good traffic {i}") for i in range(3)]
    stack.client("hostile").flush()
    got = _wait(stack, keys + good)
    for rid, (_, field) in intake.items():
        (dead,) = got.dead[("hostile", rid)]
        assert dead["reason"] == "invalid_request", (rid, dead["detail"])
        assert field in dead["detail"], (rid, dead["detail"])
        assert got.responses[("hostile", rid)][0]["error_type"] == "invalid_request"
    for rid, (_, message) in upstream.items():
        (dead,) = got.dead[("hostile", rid)]
        assert dead["reason"] == "upstream_rejected", (rid, dead["detail"])
        assert message in dead["detail"], (rid, dead["detail"])
    assert all(got.responses[k][0]["status"] == "ok" for k in good)
    assert all(len(got.responses[k]) == 1 for k in keys + good)


def test_records_written_with_every_older_schema_version_are_still_served(stack: Stack) -> None:
    store = SchemaStore()
    keys = []
    for version in store.versions["ClaudeRequest"][:-1]:
        old = build_request("legacy", f"written with {version.source}", max_tokens=32)
        names = {f["name"] for f in json.loads(version.text)["fields"]}
        old = {k: v for k, v in old.items() if k in names}
        body = io.BytesIO()
        fastavro.schemaless_writer(body, version.parsed, old)
        value = SINGLE_OBJECT_MAGIC + version.fingerprint + body.getvalue()
        client = stack.client("legacy")
        client.send_raw(
            old["request_id"].encode(),
            value,
            signed_headers("legacy", stack.secrets["legacy"], value),
        )
        keys.append(("legacy", old["request_id"]))
    stack.client("legacy").flush()
    assert len(keys) >= 2  # v1 and v2
    got = _wait(stack, keys)
    for key in keys:
        (response,) = got.responses[key]
        assert response["status"] == "ok", response["error_message"]
        message = anthropic.types.Message.model_validate(message_from_response(response))
        assert message.content[0].type == "text"
        assert "written with" in message.content[0].text


def test_large_values_are_served_and_an_oversized_dead_letter_cannot_stop_the_worker(
    stack: Stack,
) -> None:
    big_png = corpus.png(900, 900)  # ~800 KB of pixels, over 1 MB of base64
    params = {
        "model": corpus.MODEL,
        "max_tokens": 64,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": corpus.b64(big_png + b"\x00" * 400_000),
                        },
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    }
    large = request_record(params, partner_id="bulky", request_id="large-image")
    client = stack.client("bulky")
    client.send(large)
    # a forged record just under the limit: its dead letter would be over it
    forged = b"\x00" * LIMIT
    client.send_raw(b"forged-huge", forged, signed_headers("bulky", b"wrong secret", forged))
    after = build_request("bulky", "after the huge ones", max_tokens=16)
    client.send(after)
    client.flush()
    keys = [("bulky", "large-image"), ("bulky", "forged-huge"), ("bulky", after["request_id"])]
    got = _wait(stack, keys)
    assert got.responses[keys[0]][0]["status"] == "ok"
    (dead,) = got.dead[keys[1]]
    assert dead["reason"] == "auth_failed"
    assert dead["payload"] == b""
    # never replayable, so never copied (a replayable one too big is withheld)
    assert f"payload of {LIMIT} bytes kept only at its source offset" in dead["detail"]
    assert dead["payload_bytes"] == LIMIT
    assert dead["payload_sha256"] in dead["detail"]
    assert got.responses[keys[2]][0]["status"] == "ok"
    assert stack.workers["worker"][0].alive()


def test_a_budget_is_never_overrun_by_a_mixed_workload_in_flight(stack: Stack) -> None:
    kinds = [
        "pdf_document",
        "base64_jpeg",
        "tools_any",
        "thinking",
        "system_cache_5m_and_1h",
        "url_image",
        "tool_result_turn",
        "text_document_with_citations",
    ]
    keys = []
    started = time.monotonic()
    # ~$0.00105 each: 80 cost more than the budget even served one by one, so
    # some are refused whatever the timing (48 fitted when the worker was slow)
    for i in range(80):
        params = corpus.corpus()[kinds[i % len(kinds)]]
        record = request_record(params, partner_id="budgeted", request_id=f"budget-{i}")
        keys.append(_send(stack, "budgeted", record))
    stack.client("budgeted").flush()
    got = _wait(stack, keys)
    spent = sum(u["cost_usd"] for k in keys for u in got.usage[k])
    served = [k for k in keys if got.responses[k][0]["status"] == "ok"]
    refused = [k for k in keys if got.reason(k) == "quota_exceeded"]
    assert spent <= BUDGET_USD, (spent, BUDGET_USD)
    assert served, (len(served), len(refused))
    assert refused, (len(served), len(refused))
    assert len(served) + len(refused) == len(keys)
    assert spent > BUDGET_USD / 3  # reservations are not absurd: most of it gets used
    assert time.monotonic() - started < 90


def test_the_tool_use_agent_example_runs_verbatim(stack: Stack) -> None:
    stack.add_partner("agent")
    env = {
        **stack.env,
        "PARTNER": "agent",
        "PARTNER_SECRET": stack.secrets["agent"].decode(),
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent.py")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("turn 1: Claude calls get_weather(")
    assert lines[1].startswith("turn 1: Claude calls get_time(")  # in parallel
    assert lines[2].startswith("turn 2: final answer: ")
    assert "18 degrees" in lines[2]
    assert "14:05 in" in lines[2]


def test_the_usage_records_cost_what_the_upstream_bills(stack: Stack) -> None:
    # Plain input and output, 5-minute and 1-hour cache writes, then reads of
    # them, thinking (billed as output) and tools: the pipeline's cost_usd
    # against the simulator's bill, which prices them as Anthropic does.
    kinds = ["system_cache_5m_and_1h", "system_cache_5m_and_1h", "thinking", "tools_any"]
    keys = []
    for i, kind in enumerate(kinds):
        record = request_record(corpus.corpus()[kind], partner_id="billed", request_id=f"bill-{i}")
        keys.append(_send(stack, "billed", record))
    stack.client("billed").flush()
    got = _wait(stack, keys)
    usages = [u for k in keys for u in got.usage[k]]
    assert [got.responses[k][0]["status"] for k in keys] == ["ok"] * len(kinds)
    assert sum(u["cache_creation_input_tokens"] for u in usages) > 0
    assert sum(u["cache_read_input_tokens"] for u in usages) > 0
    recorded = sum(u["cost_usd"] for u in usages)
    billed = stack.sim_stats()["keys"][BILLED_KEY]["cost_usd"]
    assert recorded == pytest.approx(billed, abs=1e-9), (recorded, billed)
