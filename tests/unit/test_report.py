"""The usage report: exact figures, files pandas and DuckDB read, and a page that
is self-contained and, drawn by a real headless Chromium, shows its charts."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.ops.report import COLUMNS, render_report, summarise, write_csv, write_parquet
from pipeline.records import UsageRecord

DAY = 86_400_000
T0 = 1_780_000_000_000  # 2026-05-28 UTC


def _usage(pid: str, i: int, **kw: Any) -> UsageRecord:
    u: dict[str, Any] = {
        "request_id": f"{pid}-{i}", "partner_id": pid, "model": "claude-sonnet-4-5",
        "status": "ok", "http_status": 200, "input_tokens": 1000, "output_tokens": 200,
        "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "cost_usd": 0.006,
        "queued_ms": 10, "upstream_ms": 90 + i, "attempts": 1, "ts_ms": T0 + (i % 3) * DAY,
        "reason": None, "upstream_request_id": f"req_{i}", "cache_creation_5m_input_tokens": 0,
        "cache_creation_1h_input_tokens": 0, "web_search_requests": 0, "web_fetch_requests": 0,
        "service_tier": "standard",
    }  # fmt: skip
    u.update(kw)
    return u  # type: ignore[return-value]


def _records() -> list[UsageRecord]:
    out = [_usage("acme", i) for i in range(30)]
    out += [_usage("globex", i, cache_read_input_tokens=10_000) for i in range(10)]
    out += [
        _usage("globex", 99, status="error", reason="upstream_exhausted", cost_usd=0.0),
        _usage("initech", 0, status="error", reason="quota_exceeded", attempts=0, cost_usd=0.0),
    ]
    return out


LETTERS = [("globex", "upstream_exhausted"), ("initech", "quota_exceeded"), ("", "schema_error")]


def test_the_figures_are_exact() -> None:
    s = summarise(_records(), LETTERS)
    assert s.partners == ["acme", "globex", "initech"]
    assert s.requests == {"acme": 30, "globex": 11, "initech": 1}
    assert round(s.cost["acme"], 6) == 0.18
    assert round(s.cost_by_day["2026-05-28"]["acme"], 6) == 0.06  # i % 3 == 0: 10 of 30
    assert s.tokens["globex"]["cache read"] == 100_000
    assert s.statuses["globex"] == {"ok": 10, "error": 1}
    # cache reads at 0.1x of Sonnet's $3/MTok input instead of 1x: $0.27 per 100k tokens
    assert round(s.cache_savings["globex"], 6) == 0.27
    assert s.batch_savings["globex"] == 0.0
    assert s.dead_letters["(unknown)"] == {"schema_error": 1}
    assert s.latency_ms["initech"] == []  # never called: no latency to report


def test_savings_are_net_of_cache_write_premiums_and_count_the_batch_discount() -> None:
    # Sonnet, $3/MTok input, $15 output. 10k tokens written for 5 minutes and never
    # read: 0.25x more, $0.0075 lost. 10k written for an hour: 1x more, $0.03 lost.
    writes = [
        _usage("hooli", 0, cache_creation_input_tokens=10_000),
        _usage(
            "hooli", 1, cache_creation_input_tokens=10_000, cache_creation_1h_input_tokens=10_000
        ),
    ]
    s = summarise(writes)
    assert s.cache_savings["hooli"] == pytest.approx(-0.0375)
    # In a batch: half of 1,000 in and 200 out ($0.006), and the cache read's saving
    # is halved too (10k reads: $0.027 instead of $0.054... of a $0.03 input)
    batched = [
        _usage("umbrella", 0, service_tier="batch"),
        _usage("umbrella", 1, service_tier="batch", cache_read_input_tokens=10_000),
    ]
    s = summarise(batched)
    assert s.batch_savings["umbrella"] == pytest.approx(0.003 + (0.006 + 0.03) / 2)
    assert s.cache_savings["umbrella"] == pytest.approx(0.027 / 2)


def test_the_page_is_self_contained() -> None:
    page = render_report(summarise(_records(), LETTERS), title="Usage", period="all")
    assert page.count("<svg") == 5
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page
    for text in ("acme", "globex", "upstream_exhausted", "saved by prompt caching", "0.2700"):
        assert text in page


def test_csv_has_one_row_per_request_with_every_column() -> None:
    out = io.StringIO()
    assert write_csv(_records(), out) == 42
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == list(COLUMNS)
    assert rows[0]["ts"] == "2026-05-28T20:26:40.000+00:00"
    assert sum(float(r["cost_usd"]) for r in rows) == pytest.approx(0.24)


def test_parquet_reads_back_typed(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "usage.parquet"
    assert write_parquet(_records(), path) == 42
    table = pq.read_table(path)
    assert table.num_rows == 42
    assert str(table.schema.field("ts").type) == "timestamp[ms, tz=UTC]"
    assert sum(table.column("input_tokens").to_pylist()) == 42_000


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: matplotlib's first three default colours: bars of the first three series.
PALETTE = {"blue": (31, 119, 180), "orange": (255, 127, 14), "green": (44, 160, 44)}


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (Debian: apt-get install chromium; .ci/run does)",
)
def test_a_real_browser_draws_the_charts(tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(render_report(summarise(_records(), LETTERS), title="Usage", period="all"))
    shot = tmp_path / "report.png"
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,4200",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.exists(), done.stderr.decode(errors="replace")[-2000:]
    image = Image.open(shot).convert("RGB")
    counts = dict.fromkeys(PALETTE, 0)
    for n, rgb in image.getcolors(maxcolors=1 << 20) or []:
        assert isinstance(rgb, tuple)
        for name, want in PALETTE.items():
            if all(abs(a - b) <= 6 for a, b in zip(rgb, want, strict=True)):
                counts[name] += n
    # Every series colour covers real area (bars, not a legend swatch): the
    # charts were drawn, not left blank.
    assert all(n > 3_000 for n in counts.values()), counts


def test_progress_bars_are_silent_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.common import progress

    assert list(progress(iter(range(5)), 5, "claude.usage")) == [0, 1, 2, 3, 4]
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")
