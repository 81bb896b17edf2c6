"""Real-shaped Messages API requests: what partners moving real workloads send.

Each entry is exactly the params a partner would pass to `client.messages.create`.
The unit tests round-trip them through the wire; the integration tests send them
through the running pipeline and compare what reached the upstream, field for
field. Images and the PDF are real files built here (valid headers and structure).
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

MODEL = "claude-haiku-4-5"
THINKING_MODEL = "claude-sonnet-4-6"
#: The beta the corpus's MCP request names (the partner sending it must be allowed it).
MCP_BETA = "mcp-client-2025-11-20"


def png(width: int, height: int) -> bytes:
    """A valid PNG: signature, IHDR, one IDAT of grey pixels, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg(width: int, height: int) -> bytes:
    """A JPEG header as cameras write it: SOI, APP0 (JFIF), DQT, SOF0 with the size, EOI."""
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dqt = b"\x00" + bytes(range(1, 65))
    sof0 = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"

    def segment(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    return (
        b"\xff\xd8" + segment(0xE0, app0) + segment(0xDB, dqt) + segment(0xC0, sof0) + b"\xff\xd9"
    )


def pdf(pages: int) -> bytes:
    """A valid PDF with `pages` pages of text."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    for i in range(pages):
        content = f"BT /F1 12 Tf 72 720 Td (Quarterly report, page {i + 1}) Tj ET".encode()
        page = f"/Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R"
        objects.append(f"<< /Type /Page {page} >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
}
TIME_TOOL: dict[str, Any] = {
    "name": "get_time",
    "description": "Local time in a timezone.",
    "input_schema": {
        "type": "object",
        "properties": {"timezone": {"type": "string"}, "hour24": {"type": "boolean"}},
        "required": ["timezone"],
    },
}
STOCK_TOOL: dict[str, Any] = {
    "name": "get_stock_price",
    "description": "Price of a stock.",
    "input_schema": {
        "type": "object",
        "properties": {"ticker": {"type": "string", "minLength": 1, "maxLength": 8}},
        "required": ["ticker"],
    },
    "cache_control": {"type": "ephemeral"},
}

LONG_POLICY = "Answer as the support assistant of Example Corp. " * 40


def _user(content: object) -> dict[str, Any]:
    return {"role": "user", "content": content}


def corpus() -> dict[str, dict[str, Any]]:
    """Name -> params, one per feature partners rely on."""
    base: dict[str, Any] = {"model": MODEL, "max_tokens": 256}
    return {
        "multi_turn_text": {
            **base,
            "messages": [
                _user("Hello there."),
                {"role": "assistant", "content": "Hi, I'm Claude. How can I help you?"},
                _user("Can you explain fair scheduling in plain English?"),
            ],
        },
        "assistant_prefill": {
            **base,
            "messages": [
                _user("What's the Greek name for Sun? (A) Sol (B) Helios (C) Sun"),
                {"role": "assistant", "content": "The best answer is ("},
            ],
        },
        "system_cache_5m_and_1h": {
            **base,
            "system": [
                {
                    "type": "text",
                    "text": LONG_POLICY,
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
                {
                    "type": "text",
                    "text": "Today's promotions: " + "none. " * 60,
                    "cache_control": {"type": "ephemeral", "ttl": "5m"},
                },
            ],
            "messages": [_user("Which promotions run today?")],
        },
        "base64_png": {
            **base,
            "messages": [
                _user(
                    [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": b64(png(64, 48)),
                            },
                        },
                        {"type": "text", "text": "Describe this chart."},
                    ]
                )
            ],
        },
        "base64_jpeg": {
            **base,
            "messages": [
                _user(
                    [
                        {"type": "text", "text": "What is in this photo?"},
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/jpeg",
                                "data": b64(jpeg(4032, 3024)),
                            },
                        },
                    ]
                )
            ],
        },
        "url_image": {
            **base,
            "messages": [
                _user(
                    [
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                        },
                        {"type": "text", "text": "Is this a cat?"},
                    ]
                )
            ],
        },
        "pdf_document": {
            **base,
            "messages": [
                _user(
                    [
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": b64(pdf(3)),
                            },
                            "title": "Q3 report",
                            "cache_control": {"type": "ephemeral"},
                        },
                        {"type": "text", "text": "Summarise the report."},
                    ]
                )
            ],
        },
        "text_document_with_citations": {
            **base,
            "messages": [
                _user(
                    [
                        {
                            "type": "document",
                            "source": {
                                "type": "text",
                                "media_type": "text/plain",
                                "data": "The grass is green. The sky is blue.",
                            },
                            "title": "Facts",
                            "context": "A list of facts",
                            "citations": {"enabled": True},
                        },
                        {"type": "text", "text": "What colour is the grass?"},
                    ]
                )
            ],
        },
        "search_result": {
            **base,
            "messages": [
                _user(
                    [
                        {
                            "type": "search_result",
                            "source": "https://docs.example.com/kafka",
                            "title": "Kafka docs",
                            "content": [{"type": "text", "text": "Partitions bound parallelism."}],
                            "citations": {"enabled": True},
                        },
                        {"type": "text", "text": "What bounds parallelism?"},
                    ]
                )
            ],
        },
        "tools_auto": {
            **base,
            "tools": [WEATHER_TOOL, TIME_TOOL],
            "tool_choice": {"type": "auto"},
            "messages": [_user("Use get_weather for Paris, please.")],
        },
        "tools_any": {
            **base,
            "tools": [WEATHER_TOOL, STOCK_TOOL],
            "tool_choice": {"type": "any"},
            "messages": [_user("I need some data.")],
        },
        "tools_tool": {
            **base,
            "tools": [WEATHER_TOOL, STOCK_TOOL],
            "tool_choice": {
                "type": "tool",
                "name": "get_stock_price",
                "disable_parallel_tool_use": True,
            },
            "messages": [_user("How is ACME doing?")],
        },
        "tools_none": {
            **base,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "none"},
            "messages": [_user("Do not call get_weather, just chat.")],
        },
        "parallel_tool_calls": {
            **base,
            "tools": [WEATHER_TOOL, TIME_TOOL],
            "messages": [_user("Call get_weather for Tokyo and get_time for Asia/Tokyo.")],
        },
        "tool_result_turn": {
            **base,
            "tools": [WEATHER_TOOL],
            "messages": [
                _user("Use get_weather for Oslo."),
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "I'll use the get_weather tool."},
                        {
                            "type": "tool_use",
                            "id": "toolu_01A",
                            "name": "get_weather",
                            "input": {"city": "Oslo"},
                        },
                    ],
                },
                _user(
                    [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_01A",
                            "content": "4 degrees and snowing",
                        }
                    ]
                ),
            ],
        },
        "thinking": {
            "model": THINKING_MODEL,
            "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [_user("Is 1,001 prime? Think it through.")],
        },
        # max_tokens 0 pre-warms the prompt cache and generates nothing (issue 24)
        "cache_prewarm": {
            **base,
            "max_tokens": 0,
            "system": [
                {
                    "type": "text",
                    "text": "You answer questions about Kafka. " * 40,
                    "cache_control": {"type": "ephemeral"},
                }
            ],
            "messages": [_user("Warm the cache.")],
        },
        # carried to Claude exactly, in extra_params_json (issue 24)
        "fast_mode_in_the_eu": {
            **base,
            "speed": "fast",
            "inference_geo": "eu",
            "messages": [_user("Quickly, and in the EU: what is Kafka?")],
        },
        # a beta channel: the betas travel as anthropic-beta, MCP servers to Claude (issue 24)
        "mcp_servers_beta": {
            **base,
            "betas": [MCP_BETA],
            "mcp_servers": [
                {
                    "type": "url",
                    "url": "https://mcp.example.com/sse",
                    "name": "docs",
                    "authorization_token": "partner-mcp-token",
                }
            ],
            "messages": [_user("Search our docs server for Kafka.")],
        },
        "stop_sequences": {
            **base,
            "stop_sequences": ["kafka", "END"],
            "messages": [_user("List things; say kafka when done.")],
        },
        "metadata_user_id": {
            **base,
            "metadata": {"user_id": "3f2a9c1e-user-hash"},
            "messages": [_user("Hello from a tracked user.")],
        },
        "service_tier": {
            **base,
            "service_tier": "standard_only",
            "messages": [_user("Standard capacity only, please.")],
        },
        "temperature_0_7": {
            **base,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 40,
            "messages": [_user("Write a haiku about Kafka.")],
        },
        "top_level_cache_and_unknown_param": {
            **base,
            "cache_control": {"type": "ephemeral"},
            "output_config": {"effort": "low"},
            "messages": [_user(LONG_POLICY + " What is the policy?")],
        },
    }
