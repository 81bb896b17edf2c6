"""`claude-pipeline chaos`: the delivery promise under every fault we can make here.

Two phases on one stack (the same harness as the demo and the tests), real
processes throughout:

1. Storm and kills: three workers, five partners, requests at a steady rate while
   the simulator fails 20% of calls with 529, 5% with 500, 5% with 429, resets 2%
   of connections and holds 1% past the client's timeout; a random worker is
   killed with SIGKILL every `kill_every_s` and restarted, and one is stopped with
   SIGTERM once.
2. Outage: the upstream answers nothing but 529 for `outage_s`, then refuses
   connections (the simulator is down) for as long, then recovers. Requests carry
   deadlines; those whose deadline passes end as deadline_expired, the rest are
   served after the recovery, and the circuit breaker keeps the calls during the
   outage to one probe per backoff step.

Checked (exit 1 if any fails), and reported: no request without a response; a
request's responses all agree; an error only with a dead letter saying attempts
were exhausted or the deadline passed; a usage record for every response; no
worker died but by our hand; calls during the outage. Also reported: requests
with a second response (their outcome was not yet durable when a worker was
killed: without broker transactions that window cannot be closed, only kept
small), and calls the simulator served whose usage record a kill prevented.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline.client import build_request
from pipeline.dev.harness import Key, Outcomes, Stack
from pipeline.dev.procs import Proc
from pipeline.ops.dlq import render_table

STORM = {"529": 0.20, "500": 0.05, "429": 0.05, "reset": 0.02, "timeout": 0.01}
PARTNERS = ("alpha", "bravo", "charlie", "delta", "echo")
WORKER_ENV = {
    "PIPELINE_LOG_LEVEL": "INFO",
    "PIPELINE_MAX_ATTEMPTS": "8",
    "PIPELINE_BACKOFF_BASE_S": "0.05",
    "PIPELINE_BACKOFF_CAP_S": "1",
    "PIPELINE_UPSTREAM_TIMEOUT_S": "2",
    "PIPELINE_SHUTDOWN_GRACE_S": "5",
}
SIM_ARGS = ["--latency-ms", "20", "--jitter-ms", "10", "--timeout-hold-s", "4", "--seed", "11"]
ACCEPTED_ERRORS = {"upstream_exhausted", "deadline_expired"}
#: A signalled worker that has not exited by then is a failure (SIGTERM: grace 10 s)
EXIT_WAIT_S = 30.0


@dataclass(frozen=True)
class Plan:
    requests: int
    rate_per_s: float
    kill_every_s: float
    outage_s: float
    outage_requests: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                requests=1_500, rate_per_s=40, kill_every_s=8, outage_s=10, outage_requests=60
            )
        return cls(
            requests=10_000, rate_per_s=60, kill_every_s=20, outage_s=30, outage_requests=200
        )


@dataclass
class Report:
    figures: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)


class Chaos:
    def __init__(self, plan: Plan, workdir: Path, out: IO[str]) -> None:
        self.plan = plan
        self.out = out
        self.stack = Stack(workdir, SIM_ARGS, WORKER_ENV)
        self.report = Report()
        self.kills = 0
        self.terms = 0
        self._ours: set[int] = set()  # pids we signalled
        self._generation = Counter[str]()
        self._rng = random.Random(5)  # noqa: S311 (which worker to kill, not a secret)

    def say(self, text: str) -> None:
        self.out.write(f"  {text}\n")
        self.out.flush()

    # -- workers --------------------------------------------------------------------

    def _start(self, slot: str) -> Proc:
        self._generation[slot] += 1
        return self.stack.start_worker(f"{slot}.{self._generation[slot]}")

    def _live(self) -> dict[str, Proc]:
        return {n: p for n, (p, _) in self.stack.workers.items() if p.alive()}

    def _replace(self, name: str, sig: signal.Signals) -> float:
        """Signal a worker, wait for it to exit, start its successor; returns how
        long the worker took to exit."""
        proc = self.stack.workers[name][0]
        self._ours.add(proc.pid)
        signalled = time.monotonic()
        proc.signal(sig)
        try:
            proc.popen.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            late = f"{name} did not exit within {EXIT_WAIT_S:.0f} s of {sig.name}"
            self.report.check(False, late)
            tail = proc.log_text().splitlines()[-15:]
            self.say(f"{name} still running after {sig.name}; the end of its log:")
            for line in tail:
                self.say(f"    {line[:400]}")
            proc.signal(signal.SIGKILL)
            proc.popen.wait(10)
        exited_after = time.monotonic() - signalled
        self._start(name.split(".")[0])
        return exited_after

    # -- phase 1 ----------------------------------------------------------------------

    def _produce(self, keys: list[Key], n: int, tag: str, deadline_s: float | None = None) -> None:
        interval = 1.0 / self.plan.rate_per_s
        start = time.monotonic()
        for i in range(n):
            pid = PARTNERS[i % len(PARTNERS)]
            deadline = int((time.time() + deadline_s) * 1000) if deadline_s else None
            request = build_request(pid, f"{tag} {i}", max_tokens=32, deadline_ms=deadline)
            self.stack.client(pid).send(request)
            keys.append((pid, request["request_id"]))
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the load
        for pid in PARTNERS:
            self.stack.client(pid).flush()

    def storm(self) -> list[Key]:
        plan, stack = self.plan, self.stack
        stack.sim_faults(STORM)
        keys: list[Key] = []
        sender = threading.Thread(target=self._produce, args=(keys, plan.requests, "storm"))
        sender.start()
        termed = False
        while sender.is_alive():
            sender.join(plan.kill_every_s)
            if not sender.is_alive():
                break
            live = sorted(self._live())
            if not termed:
                self.say(f"SIGTERM {live[0]} (graceful: drains, then leaves the group)")
                drained = self._replace(live[0], signal.SIGTERM)
                self.report.figures["drain_s"] = round(drained, 2)
                self.terms += 1
                termed = True
            else:
                victim = self._rng.choice(live)
                self.say(f"SIGKILL {victim} ({len(keys)} of {plan.requests} sent)")
                self._replace(victim, signal.SIGKILL)
                self.kills += 1
        self.say(f"all {len(keys)} sent; waiting for every outcome")
        got = stack.outcomes(PARTNERS, lambda o: o.complete(keys), timeout=300)
        self._check_storm(keys, got)
        stack.sim_faults({})
        return keys

    def _check_storm(self, keys: list[Key], got: Outcomes) -> None:
        r, f = self.report, self.report.figures
        lost = [k for k in keys if not got.responses.get(k)]
        f["requests"] = len(keys)
        f["kills_sigkill"] = self.kills
        f["stops_sigterm"] = self.terms
        f["lost"] = len(lost)
        r.check(not lost, f"{len(lost)} requests without a response, e.g. {lost[:3]}")
        repeated = [k for k in keys if len(got.responses.get(k, [])) > 1]
        f["repeated_responses"] = len(repeated)
        disagree = [
            k for k in repeated if len({(x["status"], x["content"]) for x in got.responses[k]}) > 1
        ]
        r.check(not disagree, f"{len(disagree)} requests whose responses disagree")
        errors = [k for k in keys if got.responses.get(k) and got.responses[k][0]["status"] != "ok"]
        f["errors"] = len(errors)
        bad = [k for k in errors if got.reason(k) not in ACCEPTED_ERRORS]
        r.check(
            not bad, f"{len(bad)} errors for another reason: {[got.reason(k) for k in bad][:5]}"
        )
        no_usage = [k for k in keys if got.responses.get(k) and not got.usage.get(k)]
        r.check(not no_usage, f"{len(no_usage)} responses without a usage record")
        stats = self.stack.sim_stats()["totals"]["requests"]
        for kind in ("200", "529", "500", "429", "reset", "timeout"):
            f[f"sim_{kind}"] = int(stats.get(kind, 0))
        billed = sum(1 for k in keys for u in got.usage.get(k, []) if u["status"] == "ok")
        f["usage_records_ok"] = billed
        f["calls_served_without_usage"] = max(0, int(stats.get("200", 0)) - billed)

    # -- phase 2 ----------------------------------------------------------------------

    def outage(self) -> None:
        plan, stack = self.plan, self.stack
        keys: list[Key] = []
        before = stack.sim_stats()["totals"]["requests"]
        stack.sim_faults({"529": 1.0})
        self.say(f"outage: 529 only for {plan.outage_s:.0f} s, then refused for as long")
        started = time.monotonic()
        half = plan.outage_requests // 2
        self._produce(keys, half, "short deadline", deadline_s=plan.outage_s / 2)
        self._produce(keys, plan.outage_requests - half, "long deadline", deadline_s=600)
        time.sleep(max(0.0, plan.outage_s - (time.monotonic() - started)))  # the outage itself
        during_529 = stack.sim_stats()["totals"]["requests"].get("529", 0) - before.get("529", 0)
        refused_before = self._connection_errors()
        stack.stop_sim()
        time.sleep(plan.outage_s)  # the upstream is down
        refused = self._connection_errors() - refused_before
        stack.restart_sim()
        self.say("upstream back; waiting for every outcome")
        got = stack.outcomes(PARTNERS, lambda o: o.complete(keys), timeout=180)
        f, r = self.report.figures, self.report
        f["outage_s"] = plan.outage_s * 2
        f["outage_calls_529"] = during_529
        f["outage_calls_refused"] = refused
        expired = [k for k in keys if got.reason(k) == "deadline_expired"]
        served = [k for k in keys if got.responses.get(k) and got.responses[k][0]["status"] == "ok"]
        f["outage_deadline_expired"] = len(expired)
        f["outage_served_after"] = len(served)
        # 5+ failures to open, then one probe per step of 1, 2, 4, 8, 16, 30 s
        r.check(during_529 <= 60, f"{during_529} calls during a {plan.outage_s:.0f} s 529 outage")
        r.check(refused <= 30, f"{refused} calls while the upstream refused connections")
        r.check(len(expired) + len(served) == len(keys), "an outage request ended otherwise")
        r.check(
            all(k in served for k in keys[half:]), "a request with a long deadline was not served"
        )
        r.check(bool(expired), "no short-deadline request expired: the outage tested nothing")

    def _connection_errors(self) -> float:
        total = 0.0
        for name in self._live():
            text = self.stack.metrics_text(name).decode()
            for match in re.finditer(
                r'^claude_partner_errors_total\{class="(connection|timeout)".*\} ([0-9.e+]+)$',
                text,
                re.MULTILINE,
            ):
                total += float(match.group(2))
        return total

    # -- the run --------------------------------------------------------------------------

    def run(self) -> int:
        stack = self.stack
        try:
            for pid in PARTNERS:
                stack.add_partner(pid)
            for slot in ("w1", "w2", "w3"):
                self._start(slot)
            self.say(f"3 workers, {len(PARTNERS)} partners, storm {STORM}")
            self.storm()
            self.outage()
            died = [
                name
                for name, (proc, _) in stack.workers.items()
                if not proc.alive() and proc.pid not in self._ours
            ]
            self.report.check(not died, f"workers died on their own: {died}")
            self.report.figures["workers_died_unasked"] = len(died)
        finally:
            stack.close()
        return 0 if not self.report.failures else 1


def run_chaos(quick: bool, out: IO[str], results: Path | None = None, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="claude-pipeline-chaos-"))
    chaos = Chaos(Plan.of(quick), workdir, out)
    started = time.monotonic()
    try:
        code = chaos.run()
    except Exception as exc:
        chaos.report.failures.append(f"the run itself failed: {type(exc).__name__}: {exc}")
        code = 1
    report = chaos.report
    report.figures["seconds"] = round(time.monotonic() - started, 1)
    rows = [{"figure": k, "value": f"{v:g}"} for k, v in report.figures.items()]
    out.write(render_table(rows, ["figure", "value"]) + "\n")
    for failure in report.failures:
        out.write(f"FAILED   {failure}\n")
    out.write(
        ("chaos: every promise held" if code == 0 else f"chaos FAILED (logs in {workdir})") + "\n"
    )
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "quick": quick,
            "plan": chaos.plan.__dict__,
            "figures": report.figures,
            "failures": report.failures,
        }
        (results / "chaos.json").write_text(json.dumps(payload, indent=2) + "\n")
    if code == 0 and not keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return code
