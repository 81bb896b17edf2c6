"""The dashboard's panels and the alert rules, evaluated by a real Prometheus
scraping a real worker under load: every query returns data, so no misspelt
metric or label survives; every rule evaluates without error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.client import build_request
from pipeline.dev.harness import CLI
from pipeline.dev.procs import free_port, wait_until
from pipeline.ops.opsfiles import ALERTS, alert_quantities, dashboard_queries
from pipeline.ops.report import COLUMNS
from pipeline.security.signing import signed_headers
from tests.integration.stack import Stack

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (Debian: apt-get install prometheus; .ci/run does)",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("prometheus"),
        # some 429s and 529s: retries, error classes, a dead letter or two
        sim_args=["--latency-ms", "5", "--fail-rate", "429=0.1", "--fail-rate", "529=0.1"],
        worker_env={"PIPELINE_BACKLOG_INTERVAL_S": "1"},
    )
    try:
        s.add_partner("prom-a", monthly_budget_usd=50.0)
        s.add_partner("prom-b", weight=2)
        s.start_worker()  # one worker for the module: Prometheus scrapes it
        yield s
    finally:
        s.close()


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (loopback)
        body = json.loads(r.read())
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def _prometheus(stack: Stack, metrics_port: int) -> str:
    port = free_port()
    config = stack.tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{ALERTS}']\n"
        "scrape_configs:\n"
        "  - job_name: worker\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    assert PROMETHEUS is not None
    proc = stack.spawn(
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={stack.tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
    )
    base = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{base}/-/ready", 30)
    return base


def test_every_panel_and_alert_query_returns_data_from_a_worker_under_load(
    stack: Stack,
) -> None:
    _, metrics_port = stack.workers["worker"]
    base = _prometheus(stack, metrics_port)
    wait_until(lambda: bool(_query(base, "up == 1")), 30, "Prometheus scraping the worker")

    keys = [
        stack.send(pid, f"{pid} {i}", flush=False)
        for i in range(40)
        for pid in ("prom-a", "prom-b")
    ]
    twice = build_request("prom-a", "sent twice", max_tokens=16)
    stack.client("prom-a").send(twice)
    stack.client("prom-a").send(twice)  # a producer retry: a duplicate
    forged = b"not signed by prom-b"
    stack.client("prom-b").send_raw(b"forged", forged, signed_headers("prom-b", b"wrong", forged))
    for pid in ("prom-a", "prom-b"):
        stack.client(pid).flush()
    keys.append(("prom-a", twice["request_id"]))
    got = stack.outcomes(["prom-a", "prom-b"], lambda o: o.complete(keys), timeout=90)
    assert got.complete(keys)
    text = stack.metrics_text().decode()
    assert 'claude_partner_rate_limited_total{partner="prom-' in text  # a 429 happened
    assert 'claude_partner_backlog_records{partner="prom-a"}' in text

    def everything_answers() -> bool:
        return all(_query(base, q.expr) for q in dashboard_queries() + alert_quantities())

    try:
        wait_until(everything_answers, 30, "every query returning data")
    except TimeoutError:
        empty = [q for q in dashboard_queries() + alert_quantities() if not _query(base, q.expr)]
        raise AssertionError(f"no data for: {[(q.where, q.expr) for q in empty]}") from None

    # The rules loaded and evaluate against real series without error.
    assert len(_rules(base)) == 7
    wait_until(
        lambda: all(rule.get("lastEvaluation", "").startswith("2") for rule in _rules(base)),
        30,
        "every rule evaluated",
    )
    assert all(rule["health"] == "ok" for rule in _rules(base)), _rules(base)
    # Fair use of the real numbers: the budget panel shows what the ledger spent.
    (budget,) = _query(
        base, 'max by (partner) (claude_partner_budget_used_ratio{partner="prom-a"})'
    )
    assert 0 < float(budget["value"][1]) < 1


def _rules(base: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as r:  # noqa: S310
        return [rule for g in json.loads(r.read())["data"]["groups"] for rule in g["rules"]]


def test_promtool_accepts_a_live_workers_metrics(stack: Stack) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=stack.metrics_text(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_inspect_decodes_pipeline_topics_to_json_lines(stack: Stack) -> None:
    stack.add_partner("inspect-a")
    keys = [stack.send("inspect-a", f"inspect {i}", flush=False) for i in range(3)]
    forged = b"forged for inspect"
    stack.client("inspect-a").send_raw(
        b"forged-inspect", forged, signed_headers("inspect-a", b"wrong", forged)
    )
    stack.client("inspect-a").flush()
    got = stack.outcomes(["inspect-a"], lambda o: o.complete(keys), timeout=60)

    def inspect(*args: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            [*CLI, "inspect", *args], env=stack.env, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    requests = inspect("claude.requests.inspect-a")
    assert {r["key"] for r in requests} == {k for _, k in keys} | {"forged-inspect"}
    decoded = [r for r in requests if "value" in r]
    assert {r["value"]["request_id"] for r in decoded} == {k for _, k in keys}
    (bad,) = [r for r in requests if "error" in r]
    assert bad["key"] == "forged-inspect"
    assert "not Avro" in bad["error"]
    responses = inspect("claude.responses.inspect-a")
    status = {r["value"]["request_id"]: r["value"]["status"] for r in responses}
    # what the worker published, as inspect decodes it (the module's simulator
    # fails a tenth of calls with 429 and a tenth with 529: three in a row is an
    # error response, about one request in 125)
    published = {k: got.responses[("inspect-a", k)][0]["status"] for _, k in keys}
    assert status == {**published, "forged-inspect": "error"}
    (dead,) = [
        d for d in inspect("claude.dlq", "--partner", "inspect-a")
        if d["value"]["reason"] == "auth_failed"
    ]  # fmt: skip
    # sealed (pipeline/security/sealing.py): shown as its size, never dumped
    assert re.fullmatch(r"<\d+ bytes>", dead["value"]["payload"])
    usage = inspect("claude.usage", "--partner", "inspect-a")
    used = {u["value"]["request_id"]: u["value"]["status"] for u in usage}
    assert used == {**published, "forged-inspect": "error"}


def test_usage_report_filters_and_writes_files_analytics_can_read(
    stack: Stack, tmp_path: Path
) -> None:
    import csv
    import io

    import pyarrow.parquet as pq

    stack.add_partner("report-a")
    stack.add_partner("report-b")
    keys = [
        stack.send(p, f"{p} {i}", flush=False) for i in range(4) for p in ("report-a", "report-b")
    ]
    for pid in ("report-a", "report-b"):
        stack.client(pid).flush()
    got = stack.outcomes(["report-a", "report-b"], lambda o: o.complete(keys), timeout=60)
    # The module's simulator fails 20% of calls: a request may exhaust its attempts.
    # The report must say what happened to each one, as its response did.
    status = {k: got.responses[(p, k)][0]["status"] for p, k in keys}

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*CLI, "usage", "report", *args],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == "" or "written to" in done.stderr  # no progress bar off a terminal
        return done

    rows = list(
        csv.DictReader(io.StringIO(report("--format", "csv", "--partner", "report-a").stdout))
    )
    assert {r["request_id"]: r["status"] for r in rows} == {
        k: status[k] for p, k in keys if p == "report-a"
    }
    parquet = tmp_path / "usage.parquet"
    report("--format", "parquet", "--partner", "report-b", "--output", str(parquet))
    table = pq.read_table(parquet)
    assert sorted(table.column("request_id").to_pylist()) == sorted(
        k for p, k in keys if p == "report-b"
    )
    ids, outputs = table.column("request_id").to_pylist(), table.column("output_tokens").to_pylist()
    served = zip(ids, outputs, strict=True)
    assert all(n > 0 for k, n in served if status[k] == "ok")
    old = report("--format", "csv", "--partner", "report-a", "--until", "2020-01-01").stdout
    assert old.strip() == ",".join(COLUMNS)  # the header alone
    page = tmp_path / "report.html"
    report("--format", "html", "--since", "1h", "--output", str(page))
    text = page.read_text()
    assert text.count("<svg") == 5
    assert "report-a" in text
    assert "report-b" in text
    bad = subprocess.run(
        [*CLI, "usage", "report", "--format", "parquet"],
        env=stack.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1
