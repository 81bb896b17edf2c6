"""The seed document's design, built faithfully as a baseline.

A Celery app with a Redis broker; one task per partner message that calls
Claude with the synchronous `anthropic` client through the seed's
`call_claude_with_retry` (exponential backoff with `time.sleep` on a 429),
exactly as the partners guide shows it. Only the model and max_tokens are
those of the benchmark, so both sides ask the simulator for the same work.

Run by `claude-pipeline bench seed-baseline` as
`celery -A pipeline.dev.bench.baselines.celery_seed worker ...`; needs the
`bench` extra (celery, redis).
"""

from __future__ import annotations

import os
import time
from typing import Any

from anthropic import Anthropic
from celery import Celery

BROKER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("tasks", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # the guide's defaults otherwise: prefetch multiplier 4, acks early
    worker_hijack_root_logger=False,
)

MODEL = os.environ.get("BENCH_MODEL", "claude-haiku-4-5")
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "64"))


def call_claude_with_retry(client: Anthropic, messages: Any, max_retries: int = 3) -> Any:
    for attempt in range(max_retries):
        try:
            response = client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=messages)
            return response
        except Exception as e:
            if "429" in str(e):
                wait_time = 2**attempt  # Exponential backoff
                print(f"Rate limited. Retrying in {wait_time} seconds...")
                time.sleep(wait_time)
            else:
                raise e
    raise Exception("Max retries exceeded")


@app.task
def process_partner_message(partner_name: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    client = Anthropic(api_key=os.environ["ANTHROPIC_API_KEY"])
    response = call_claude_with_retry(client, messages)
    return {
        "partner": partner_name,
        "text": response.content[0].text,
        "done_at": time.time(),
    }
