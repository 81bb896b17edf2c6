"""A tool-use agent over Kafka: the Messages API loop, with the pipeline in between.

Send a request with tools; when Claude answers with tool_use blocks, run the tools
here and send their results back as a tool_result turn; repeat until Claude gives
its final answer. Each turn is one signed request on claude.requests.<partner>,
built from exactly the params `client.messages.create` would take, and each answer
comes back from claude.responses.<partner> as the Messages API response.

    KAFKA_BOOTSTRAP_SERVERS=... PARTNER=acme PARTNER_SECRET=... python examples/agent.py
"""

import json
import os

from pipeline.client import PartnerClient, ResponseWaiter, message_from_response, request_record
from pipeline.config import Settings
from pipeline.schemas import Codec

settings = Settings.from_env()
partner = os.environ.get("PARTNER", "acme")
codec = Codec()
client = PartnerClient(settings, partner, os.environ["PARTNER_SECRET"].encode(), codec)


def get_weather(city, unit="celsius"):
    return f"{city}: 18 degrees {unit}, light rain"


def get_time(timezone, hour24=True):
    return f"14:05 in {timezone}"


TOOLS = {"get_weather": get_weather, "get_time": get_time}
params = {
    "model": "claude-haiku-4-5",
    "max_tokens": 512,
    "tools": [
        {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
        {
            "name": "get_time",
            "description": "Local time in a timezone.",
            "input_schema": {
                "type": "object",
                "properties": {"timezone": {"type": "string"}},
                "required": ["timezone"],
            },
        },
    ],
    "messages": [{"role": "user", "content": "Use get_weather and get_time for Lisbon."}],
}

for turn in range(1, 6):
    waiter = ResponseWaiter(settings, partner, codec)  # from the topic's end, before sending
    request = client.send(request_record(params, partner_id=partner))
    client.flush()
    record = waiter.wait(request, timeout=60)
    if record is None:
        raise SystemExit(f"turn {turn}: no response within 60 s")
    message = message_from_response(record)
    if message["type"] == "error":
        raise SystemExit(f"turn {turn}: {message['error']['type']}: {message['error']['message']}")
    params["messages"].append({"role": "assistant", "content": message["content"]})
    calls = [block for block in message["content"] if block["type"] == "tool_use"]
    if message["stop_reason"] != "tool_use":
        answer = "".join(block["text"] for block in message["content"] if block["type"] == "text")
        print(f"turn {turn}: final answer: {answer}")
        break
    for call in calls:
        print(f"turn {turn}: Claude calls {call['name']}({json.dumps(call['input'])})")
    params["messages"].append(
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": call["id"],
                    "content": TOOLS[call["name"]](**call["input"]),
                }
                for call in calls
            ],
        }
    )
else:
    raise SystemExit("no final answer after 5 turns")
