"""`claude-pipeline demo`: the whole mission on a laptop, in under a minute.

Starts an embedded broker, the Claude simulator (or uses the real API when
ANTHROPIC_API_KEY is set and --sim is not given) and a worker, each as its own
process on free ports (`pipeline.dev.harness`, the same stack the tests and the
benchmarks use); registers three partners with different weights; sends requests
from all three, including a few that must fail; waits for every outcome; prints a
per-partner table; stops everything it started.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pipeline.client import PartnerClient, build_request
from pipeline.dev.apicurio import SchemaRegistryServer
from pipeline.dev.harness import Key, Outcomes, Stack
from pipeline.ops.dlq import percentile, render_table
from pipeline.security.signing import signed_headers

DEMO_KEY = "sk-demo-not-a-real-key"
SIM_MODEL = "claude-haiku-4-5"
PARTNERS = (("acme", 3), ("globex", 2), ("initech", 1))
SIM_ARGS = (
    *("--latency-ms", "40", "--jitter-ms", "20", "--ms-per-output-token", "0.5"),
    *("--fail-rate", "529=0.03", "--fail-rate", "500=0.01", "--seed", "7", "--keys", DEMO_KEY),
)
#: The worker as it runs by default (the harness tunes retries down for tests).
WORKER_ENV = {
    "PIPELINE_LOG_LEVEL": "INFO",
    "PIPELINE_MAX_ATTEMPTS": "5",
    "PIPELINE_BACKOFF_BASE_S": "0.1",
    "PIPELINE_BACKOFF_CAP_S": "2",
    "PIPELINE_UPSTREAM_TIMEOUT_S": "60",
}


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latencies: list[int] = field(default_factory=list)
    attempts: int = 0


class Demo:
    def __init__(
        self,
        use_sim: bool,
        per_partner: int,
        out: IO[str],
        keep: bool = False,
        report: str | None = None,
    ) -> None:
        self.report = report
        self.use_sim = use_sim
        self.per_partner = per_partner
        self.out = out
        self.keep = keep
        #: every request sent, and what it must end with: "ok" or a dead-letter reason
        self.expected: dict[Key, str] = {}
        #: run Apicurio Registry and the Confluent wire format through it
        self.schema_registry = False

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self, api_key: str | None) -> int:
        workdir = Path(tempfile.mkdtemp(prefix="claude-pipeline-demo-"))
        try:
            return self._run(workdir, api_key)
        finally:
            if not self.keep:
                shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, workdir: Path, api_key: str | None) -> int:
        started = time.monotonic()
        with contextlib.ExitStack() as servers:
            env = dict(WORKER_ENV)
            if self.schema_registry:
                registry = servers.enter_context(SchemaRegistryServer(workdir=workdir))
                env["SCHEMA_REGISTRY_URL"] = registry.url
                self.say(f"registry    Apicurio Registry at {registry.url}")
            code = self._run_stack(workdir, api_key, env, started)
            if self.schema_registry:
                subjects = registry.subjects()
                self.say(f"registry    {len(subjects)} subjects: {', '.join(sorted(subjects))}")
            return code

    def _run_stack(
        self, workdir: Path, api_key: str | None, env: dict[str, str], started: float
    ) -> int:
        stack = Stack(
            workdir,
            SIM_ARGS,
            env,
            DEMO_KEY if self.use_sim else str(api_key),
            simulate=self.use_sim,
        )
        try:
            if stack.engine == "kafka":
                self.say(f"broker      Apache Kafka 4.4 (KRaft) on {stack.broker.bootstrap}")
            else:
                self.say(f"broker      Tansu on {stack.broker.bootstrap} (in memory)")
            if self.use_sim:
                self.say(f"claude      simulator on {stack.sim_url} (3% 529s, 1% 500s)")
            else:
                self.say("claude      the real Anthropic API (ANTHROPIC_API_KEY is set)")
            for pid, weight in PARTNERS:
                stack.add_partner(
                    pid,
                    weight=weight,
                    max_tokens_cap=1024,
                    allowed_models=(SIM_MODEL,) if pid == "initech" else (),
                )
            self.say("partners    " + ", ".join(f"{p} (weight {w})" for p, w in PARTNERS))
            stack.start_worker()
            _, port = stack.workers["worker"]
            self.say(f"worker      running; metrics on http://127.0.0.1:{port}/metrics")
            self._send(stack)
            self.say(f"sent        {len(self.expected)} requests; waiting for every outcome...")
            got = stack.outcomes(
                [p for p, _ in PARTNERS],
                lambda o: o.complete(self.expected) and self._dead_letters_in(o),
                timeout=90.0,
            )
            tallies, problems = self._verify(got)
        finally:
            stack.close()
        if self.report:
            self._write_report(got)
        self.say("")
        self.say(self._table(tallies))
        self.say("")
        elapsed = time.monotonic() - started
        if problems:
            for problem in problems[:20]:
                self.say(f"PROBLEM     {problem}")
            self.say(f"demo FAILED in {elapsed:.1f} s (logs kept in {workdir})")
            self.keep = True
            return 1
        self.say(
            f"every request got exactly one outcome ({len(self.expected)} requests, "
            f"{elapsed:.1f} s)"
        )
        return 0

    def _write_report(self, got: Outcomes) -> None:
        """The run's usage report, the page `usage report --format html` writes."""
        from pipeline.ops.report import render_report, summarise

        usage = [u for records in got.usage.values() for u in records]
        letters = [d for dead in got.dead.values() for d in dead] + got.dead_without_id
        reasons = [(str(d["partner_id"] or ""), str(d["reason"])) for d in letters]
        page = render_report(
            summarise(usage, reasons),  # type: ignore[arg-type]
            title="Claude usage by partner (demo)",
            period="one demo run",
        )
        assert self.report is not None  # noqa: S101
        Path(self.report).write_text(page, encoding="utf-8")
        self.say(f"report      {self.report}")

    def _dead_letters_in(self, got: Outcomes) -> bool:
        return all(kind == "ok" or key in got.dead for key, kind in self.expected.items())

    # -- traffic -----------------------------------------------------------------

    def _send(self, stack: Stack) -> None:
        per_partner = self.per_partner if self.use_sim else 2
        for i in range(per_partner):
            for pid, _ in PARTNERS:
                prompt = f"{pid} request {i}: explain fair scheduling in one line"
                req = build_request(pid, prompt, model=SIM_MODEL, max_tokens=128)
                stack.client(pid).send(req)
                self.expected[(pid, req["request_id"])] = "ok"
        self._send_invalid(stack)
        for pid, _ in PARTNERS:
            stack.client(pid).flush()

    def _send_invalid(self, stack: Stack) -> None:
        clients: dict[str, PartnerClient] = {pid: stack.client(pid) for pid, _ in PARTNERS}
        acme, globex, initech = clients["acme"], clients["globex"], clients["initech"]
        # signed with the wrong secret
        req = build_request("acme", "forged")
        value = stack.codec.encode("ClaudeRequest", req)
        acme.send_raw(req["request_id"].encode(), value, signed_headers("acme", b"wrong", value))
        self.expected[("acme", req["request_id"])] = "auth_failed"
        # correctly signed garbage
        rid = str(uuid.uuid4())
        globex.send_raw(rid.encode(), b"\x00\x01 definitely not avro")
        self.expected[("globex", rid)] = "schema_error"
        # a model this partner may not use
        req = build_request("initech", "wrong model", model="claude-opus-4-8")
        initech.send(req)
        self.expected[("initech", req["request_id"])] = "invalid_request"
        # over the partner's max_tokens cap
        req = build_request("globex", "too long", max_tokens=4096)
        globex.send(req)
        self.expected[("globex", req["request_id"])] = "invalid_request"
        # already past its deadline
        req = build_request("acme", "too late", deadline_ms=int(time.time() * 1000) - 1000)
        acme.send(req)
        self.expected[("acme", req["request_id"])] = "deadline_expired"

    # -- outcomes ------------------------------------------------------------------

    def _verify(self, got: Outcomes) -> tuple[dict[str, Tally], list[str]]:
        tallies = {p: Tally() for p, _ in PARTNERS}
        problems = []
        for key, kind in self.expected.items():
            responses, usage = got.responses.get(key, []), got.usage.get(key, [])
            t = tallies[key[0]]
            if len(responses) != 1 or len(usage) != 1:
                problems.append(
                    f"{key[0]}/{key[1]}: {len(responses)} responses, {len(usage)} usage records"
                )
                continue
            r = responses[0]
            t.cost += usage[0]["cost_usd"]
            reasons = [d["reason"] for d in got.dead.get(key, [])]
            if r["status"] == "ok":
                t.ok += 1
                t.input_tokens += r["usage"]["input_tokens"]
                t.output_tokens += r["usage"]["output_tokens"]
                t.latencies.append(r["latency_ms"])
                t.attempts += r["attempts"]
                if reasons:
                    problems.append(f"{key[0]}/{key[1]}: ok but dead-lettered {reasons}")
            else:
                t.errors += 1
                t.reasons.update(reasons)
                if len(reasons) != 1:
                    problems.append(f"{key[0]}/{key[1]}: error with {len(reasons)} dead letters")
            if kind != "ok" and reasons != [kind]:
                problems.append(f"{key[0]}/{key[1]}: expected {kind}, got {reasons or 'ok'}")
        return tallies, problems

    def _table(self, tallies: dict[str, Tally]) -> str:
        rows = []
        for pid, weight in PARTNERS:
            t = tallies[pid]
            rows.append(
                {
                    "partner": pid,
                    "weight": weight,
                    "ok": t.ok,
                    "errors": t.errors,
                    "dead letters": " ".join(f"{r}={n}" for r, n in sorted(t.reasons.items()))
                    or "-",
                    "tokens in/out": f"{t.input_tokens}/{t.output_tokens}",
                    "cost $": f"{t.cost:.4f}",
                    "p50 ms": _fmt(percentile(t.latencies, 50)),
                    "p95 ms": _fmt(percentile(t.latencies, 95)),
                    "retries": t.attempts - t.ok,
                }
            )
        return render_table(rows, list(rows[0]))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def run_demo(
    api_key: str | None,
    *,
    use_sim: bool,
    per_partner: int,
    keep: bool = False,
    report: str | None = None,
    schema_registry: bool = False,
) -> int:
    demo = Demo(use_sim, per_partner, sys.stdout, keep, report)
    demo.schema_registry = schema_registry
    return demo.run(api_key)
