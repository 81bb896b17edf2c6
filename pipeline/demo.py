"""`claude-pipeline demo`: the whole mission on a laptop, in under a minute.

Starts an embedded broker, the Claude simulator (or uses the real API when
ANTHROPIC_API_KEY is set and --sim is not given) and a worker, each as its own
process on free ports; registers three partners with different weights; sends
requests from all three, including a few that must fail; waits for every
outcome; prints a per-partner table; stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline.admin import add_partner
from pipeline.client import PartnerClient, build_request
from pipeline.config import Settings
from pipeline.devbroker import DevBroker, free_port
from pipeline.kafka import read_topics
from pipeline.ops import percentile, render_table
from pipeline.partners import DLQ_TOPIC, USAGE_TOPIC, Partner, responses_topic
from pipeline.procs import child, wait_http
from pipeline.schemas import Codec
from pipeline.security import signed_headers

DEMO_KEY = "sk-demo-not-a-real-key"
SIM_MODEL = "claude-haiku-4-5"
PARTNERS = (("acme", 3), ("globex", 2), ("initech", 1))


@dataclass
class Expectation:
    partner: str
    kind: str  # "ok" or the dead-letter reason the request must end with


@dataclass
class Tally:
    responses: Counter[str] = field(default_factory=Counter)
    ok: int = 0
    errors: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latencies: list[int] = field(default_factory=list)
    attempts: int = 0


class Demo:
    def __init__(self, use_sim: bool, per_partner: int, out: IO[str], keep: bool = False) -> None:
        self.use_sim = use_sim
        self.per_partner = per_partner
        self.out = out
        self.keep = keep
        self.codec = Codec()
        self.expected: dict[tuple[str, str], Expectation] = {}

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self, base_env: dict[str, str]) -> int:
        workdir = Path(tempfile.mkdtemp(prefix="claude-pipeline-demo-"))
        try:
            return self._run(base_env, workdir)
        finally:
            if not self.keep:
                shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, base_env: dict[str, str], workdir: Path) -> int:
        started = time.monotonic()
        python = sys.executable
        with ExitStack() as stack:
            broker = stack.enter_context(DevBroker(log_file=workdir / "broker.log"))
            self.say(f"broker      Tansu on {broker.bootstrap} (in memory)")
            env = dict(base_env)
            secret_env = {f"DEMO_SECRET_{p.upper()}": secrets.token_hex(16) for p, _ in PARTNERS}
            env.update(secret_env)
            os.environ.update(secret_env)  # this process signs as the partners too
            env.update(
                KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
                PIPELINE_PARTNERS_FILE=str(workdir / "partners.toml"),
                PIPELINE_PROFILE="dev",
                PIPELINE_METRICS_PORT=str(free_port()),
                PIPELINE_LOG_LEVEL="INFO",
            )
            if self.use_sim:
                port = free_port()
                sim_args = [
                    *("--port", str(port), "--latency-ms", "40", "--jitter-ms", "20"),
                    *("--ms-per-output-token", "0.5", "--fail-rate", "529=0.03"),
                    *("--fail-rate", "500=0.01", "--seed", "7", "--keys", DEMO_KEY),
                    *("--log-level", "WARNING"),
                ]
                sim = stack.enter_context(
                    child("sim", [python, "-m", "pipeline", "sim", *sim_args], env, workdir)
                )
                wait_http(f"http://127.0.0.1:{port}/_sim/health", 20, sim)
                env.update(
                    ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}", ANTHROPIC_API_KEY=DEMO_KEY
                )
                self.say(f"claude      simulator on http://127.0.0.1:{port} (3% 529s, 1% 500s)")
            else:
                self.say("claude      the real Anthropic API (ANTHROPIC_API_KEY is set)")
            settings = Settings.from_env(env)
            for pid, weight in PARTNERS:
                add_partner(
                    settings,
                    self.codec,
                    Partner(
                        partner_id=pid,
                        signing_secret_ref=f"env:DEMO_SECRET_{pid.upper()}",
                        weight=weight,
                        max_tokens_cap=1024,
                        allowed_models=(SIM_MODEL,) if pid == "initech" else (),
                    ),
                )
            self.say("partners    " + ", ".join(f"{p} (weight {w})" for p, w in PARTNERS))
            worker = stack.enter_context(
                child("worker", [python, "-m", "pipeline", "worker"], env, workdir)
            )
            metrics_url = f"http://127.0.0.1:{env['PIPELINE_METRICS_PORT']}/metrics"
            wait_http(metrics_url, 30, worker, b"claude_worker_ready 1.0")
            self.say(f"worker      running; metrics on {metrics_url}")
            self._send(settings)
            self.say(f"sent        {len(self.expected)} requests; waiting for every outcome...")
            tallies, problems = self._collect(settings, timeout=90.0)
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

    # -- traffic -----------------------------------------------------------------

    def _send(self, settings: Settings) -> None:
        per_partner = self.per_partner if self.use_sim else 2
        clients = {
            pid: PartnerClient(
                settings, pid, os.environ[f"DEMO_SECRET_{pid.upper()}"].encode(), self.codec
            )
            for pid, _ in PARTNERS
        }
        model = SIM_MODEL
        for i in range(per_partner):
            for pid, _ in PARTNERS:
                prompt = f"{pid} request {i}: explain fair scheduling in one line"
                req = build_request(
                    pid, prompt, model=model, max_tokens=128 if self.use_sim else 64
                )
                clients[pid].send(req)
                self.expected[(pid, req["request_id"])] = Expectation(pid, "ok")
        self._send_invalid(clients)
        for client in clients.values():
            client.flush()

    def _send_invalid(self, clients: dict[str, PartnerClient]) -> None:
        acme, globex, initech = clients["acme"], clients["globex"], clients["initech"]

        def expect(pid: str, request_id: str, reason: str) -> None:
            self.expected[(pid, request_id)] = Expectation(pid, reason)

        # signed with the wrong secret
        req = build_request("acme", "forged")
        value = self.codec.encode("ClaudeRequest", req)
        acme.send_raw(req["request_id"].encode(), value, signed_headers("acme", b"wrong", value))
        expect("acme", req["request_id"], "auth_failed")
        # correctly signed garbage
        rid = str(uuid.uuid4())
        globex.send_raw(rid.encode(), b"\x00\x01 definitely not avro")
        expect("globex", rid, "schema_error")
        # a model this partner may not use
        req = build_request("initech", "wrong model", model="claude-opus-4-8")
        initech.send(req)
        expect("initech", req["request_id"], "invalid_request")
        # over the partner's max_tokens cap
        req = build_request("globex", "too long", max_tokens=4096)
        globex.send(req)
        expect("globex", req["request_id"], "invalid_request")
        # already past its deadline
        req = build_request("acme", "too late", deadline_ms=int(time.time() * 1000) - 1000)
        acme.send(req)
        expect("acme", req["request_id"], "deadline_expired")

    # -- outcomes ------------------------------------------------------------------

    def _collect(self, settings: Settings, timeout: float) -> tuple[dict[str, Tally], list[str]]:
        responses: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        dead: dict[tuple[str, str], list[str]] = defaultdict(list)
        usage: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        topics = [responses_topic(p) for p, _ in PARTNERS] + [DLQ_TOPIC, USAGE_TOPIC]
        deadline = time.monotonic() + timeout
        for msg in read_topics(settings, topics, follow=True, idle_timeout=timeout):
            value = msg.value()
            topic = msg.topic() or ""
            if value is not None:
                if topic == DLQ_TOPIC:
                    d = self.codec.decode("DeadLetter", value)
                    dead[(d["partner_id"], d["request_id"])].append(d["reason"])
                elif topic == USAGE_TOPIC:
                    u = self.codec.decode("UsageRecord", value)
                    usage[(u["partner_id"], u["request_id"])].append(u)
                else:
                    r = self.codec.decode("ClaudeResponse", value)
                    responses[(r["partner_id"], r["request_id"])].append(r)
            complete = all(
                k in responses and k in usage and (e.kind == "ok" or k in dead)
                for k, e in self.expected.items()
            )
            if complete or time.monotonic() > deadline:
                break
        return self._verify(responses, dead, usage)

    def _verify(
        self,
        responses: dict[tuple[str, str], list[dict[str, Any]]],
        dead: dict[tuple[str, str], list[str]],
        usage: dict[tuple[str, str], list[dict[str, Any]]],
    ) -> tuple[dict[str, Tally], list[str]]:
        tallies = {p: Tally() for p, _ in PARTNERS}
        problems = []
        for key, exp in self.expected.items():
            got = responses.get(key, [])
            used = usage.get(key, [])
            t = tallies[exp.partner]
            if len(got) != 1 or len(used) != 1:
                problems.append(
                    f"{key[0]}/{key[1]}: {len(got)} responses, {len(used)} usage records"
                )
                continue
            r = got[0]
            t.cost += used[0]["cost_usd"]
            reasons = dead.get(key, [])
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
            if exp.kind != "ok" and reasons != [exp.kind]:
                problems.append(f"{key[0]}/{key[1]}: expected {exp.kind}, got {reasons or 'ok'}")
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


def run_demo(env: dict[str, str], *, use_sim: bool, per_partner: int, keep: bool = False) -> int:
    return Demo(use_sim, per_partner, sys.stdout, keep).run(env)
