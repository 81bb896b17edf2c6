"""The usage report: claude.usage (and claude.dlq) as tables, files for analytics,
and one self-contained HTML page with charts.

Charts are drawn with matplotlib to inline SVG: a well-kept library (NumFOCUS,
two decades of releases) whose static output needs no JavaScript and no CDN, so
the page works offline, prints, and stays small (Plotly inlines about 3.5 MB of
script per page). It is an optional extra (`pip install
claude-partner-pipeline[report]`), as is pyarrow for Parquet.
"""

from __future__ import annotations

import csv
import html
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.limits.pricing import PriceTable
from pipeline.records import UsageRecord

#: The columns of `--format csv|parquet`, one row per usage record.
COLUMNS = (
    "ts", "partner_id", "request_id", "model", "status", "reason", "http_status",
    "input_tokens", "output_tokens", "cache_read_input_tokens",
    "cache_creation_input_tokens", "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens", "cost_usd", "queued_ms", "upstream_ms", "attempts",
    "service_tier", "web_search_requests", "upstream_request_id",
    "web_fetch_requests", "thinking_tokens", "speed", "inference_geo",
)  # fmt: skip

TOKEN_KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache read": "cache_read_input_tokens",
    "cache write": "cache_creation_input_tokens",
}


def row(u: UsageRecord) -> dict[str, Any]:
    """One usage record as a flat row (a UTC timestamp instead of epoch ms)."""
    out: dict[str, Any] = {c: u.get(c) for c in COLUMNS if c != "ts"}
    out["ts"] = datetime.fromtimestamp(u["ts_ms"] / 1000, tz=UTC)
    return {c: out.get(c) for c in COLUMNS}


def write_csv(records: Iterable[UsageRecord], out: io.TextIOBase | Any) -> int:
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    n = 0
    for u in records:
        r = row(u)
        r["ts"] = r["ts"].isoformat(timespec="milliseconds")
        writer.writerow(r)
        n += 1
    return n


def write_parquet(records: Iterable[UsageRecord], path: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(
            "--format parquet needs pyarrow: pip install 'claude-partner-pipeline[report]'"
        ) from exc
    rows = [row(u) for u in records]
    schema = pa.schema(
        [
            ("ts", pa.timestamp("ms", tz="UTC")),
            *((c, pa.string()) for c in ("partner_id", "request_id", "model", "status", "reason")),
            ("http_status", pa.int32()),
            *(
                (c, pa.int64())
                for c in COLUMNS[7:13]  # the token counts
            ),
            ("cost_usd", pa.float64()),
            ("queued_ms", pa.int64()),
            ("upstream_ms", pa.int64()),
            ("attempts", pa.int32()),
            ("service_tier", pa.string()),
            ("web_search_requests", pa.int64()),
            ("upstream_request_id", pa.string()),
            ("web_fetch_requests", pa.int64()),
            ("thinking_tokens", pa.int64()),
            ("speed", pa.string()),
            ("inference_geo", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)
    return len(rows)


# -- the HTML report --------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))])


@dataclass
class Summary:
    """What the page shows, computed once from the records."""

    cost_by_day: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    tokens: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    dead_letters: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    upstream_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cost: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: What prompt caching saved, net of the cache-write premiums (negative when
    #: the writes were never read back), and what the Batches API's half price saved.
    cache_savings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    batch_savings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    requests: Counter[str] = field(default_factory=Counter)

    @property
    def partners(self) -> list[str]:
        return sorted(self.requests)


def savings(u: UsageRecord, prices: PriceTable) -> tuple[float, float]:
    """What one request's caching saved (net: every input token at the plain input
    price, against the cache's reads and writes) and what its batch discount saved."""
    model = str(u["model"] or "")
    reads, writes = int(u["cache_read_input_tokens"]), int(u["cache_creation_input_tokens"])
    one_hour = int(u.get("cache_creation_1h_input_tokens") or 0)
    plain = int(u["input_tokens"]) + reads + writes
    batch = u.get("service_tier") == "batch"
    output = int(u["output_tokens"])
    actual = prices.cost(
        model, int(u["input_tokens"]), output, reads, writes,
        cache_creation_1h_input_tokens=one_hour, batch=batch,
    )  # fmt: skip
    uncached = prices.cost(model, plain, output, batch=batch)
    listed = prices.cost(model, plain, output)
    return uncached - actual, listed - uncached


def summarise(
    records: Iterable[UsageRecord],
    dead_letter_reasons: Iterable[tuple[str, str]] = (),
    prices: PriceTable | None = None,
) -> Summary:
    """Per partner: cost per UTC day, tokens by kind, requests by status, latency,
    what prompt caching saved net (reads at 0.1x input instead of 1x, less the
    1.25x and 2x write premiums) and what batching saved (half price)."""
    prices = prices or PriceTable()
    s = Summary()
    for u in records:
        pid = str(u["partner_id"])
        day = datetime.fromtimestamp(u["ts_ms"] / 1000, tz=UTC).strftime("%Y-%m-%d")
        s.requests[pid] += 1
        s.cost[pid] += u["cost_usd"]
        s.cost_by_day[day][pid] += u["cost_usd"]
        for kind, name in TOKEN_KINDS.items():
            s.tokens[pid][kind] += int(u.get(name) or 0)  # type: ignore[call-overload]
        s.statuses[pid][str(u["status"])] += 1
        if u["attempts"]:
            s.upstream_ms[pid].append(float(u["upstream_ms"]))
            s.latency_ms[pid].append(float(u["queued_ms"] + u["upstream_ms"]))
        cached, batched = savings(u, prices)
        s.cache_savings[pid] += cached
        s.batch_savings[pid] += batched
    for pid, reason in dead_letter_reasons:
        s.dead_letters[pid or "(unknown)"][reason] += 1
    return s


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _axes(title: str, ylabel: str, empty: bool) -> tuple[Any, Any]:
    """A figure with our look: title left, no top or right spine."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.4))
    ax = fig.subplots()
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    if empty:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig, ax


def _bars(
    title: str,
    categories: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    *,
    horizontal: bool = False,
    colors: dict[str, str] | None = None,
) -> str:
    """A stacked bar chart as inline SVG."""
    fig, ax = _axes(title, "" if horizontal else ylabel, not categories)
    if horizontal:
        ax.set_xlabel(ylabel)
    base = [0.0] * len(categories)
    for label, values in series.items():
        color = (colors or {}).get(label)
        if horizontal:
            ax.barh(categories, values, left=base, label=label, color=color)
        else:
            ax.bar(categories, values, bottom=base, label=label, color=color)
        base = [b + v for b, v in zip(base, values, strict=True)]
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return f'<figure class="chart">{_svg(fig)}</figure>'


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:,.4f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em;margin-bottom:0}.meta{color:#666;margin-top:.3em}
h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:3px 9px;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
figure.chart{margin:.6em 0}figure.chart svg{max-width:100%;height:auto}
.note{color:#555;font-size:.9em}
"""


def render_report(s: Summary, *, title: str, period: str) -> str:
    """One self-contained page: every chart inline SVG, no script, no external file."""
    partners = s.partners
    days = sorted(s.cost_by_day)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(period)} &middot; "
        f"{sum(s.requests.values()):,} requests &middot; ${sum(s.cost.values()):,.4f}</p>",
        "<h2>Cost per partner per day</h2>",
        _bars(
            "Cost per UTC day (USD)",
            days,
            {p: [s.cost_by_day[d][p] for d in days] for p in partners},
            "USD",
        ),
        _table(
            ["day", *partners],
            [[d, *(round(s.cost_by_day[d][p], 6) for p in partners)] for d in days],
        ),
        "<h2>Tokens by kind</h2>",
        _bars(
            "Tokens by kind",
            partners,
            {k: [float(s.tokens[p][k]) for p in partners] for k in TOKEN_KINDS},
            "tokens",
        ),
        _table(
            ["partner", *TOKEN_KINDS],
            [[p, *(s.tokens[p][k] for k in TOKEN_KINDS)] for p in partners],
        ),
        "<h2>Requests by status</h2>",
    ]
    statuses = sorted({st for c in s.statuses.values() for st in c})
    parts.append(
        _bars(
            "Requests by status",
            partners,
            {st: [float(s.statuses[p][st]) for p in partners] for st in statuses},
            "requests",
            colors={"ok": "tab:green", "error": "tab:red"},
        )
    )
    parts.append(
        _table(
            ["partner", *statuses], [[p, *(s.statuses[p][st] for st in statuses)] for p in partners]
        )
    )
    reasons = sorted({r for c in s.dead_letters.values() for r in c})
    dl_partners = sorted(s.dead_letters)
    parts.append("<h2>Dead letters by reason</h2>")
    parts.append(
        _bars(
            "Dead letters by reason",
            reasons,
            {p: [float(s.dead_letters[p][r]) for r in reasons] for p in dl_partners},
            "dead letters",
            horizontal=True,
        )
    )
    parts.append(
        _table(
            ["reason", *dl_partners],
            [[r, *(s.dead_letters[p][r] for p in dl_partners)] for r in reasons],
        )
    )
    parts.append("<h2>Latency (queued + upstream, ms)</h2>")
    qs = (50, 95, 99)
    parts.append(_grouped("Latency percentiles by partner (ms)", partners, s, qs))
    parts.append(
        _table(
            ["partner", *(f"p{q}" for q in qs), *(f"upstream p{q}" for q in qs)],
            [
                [
                    p,
                    *(_pct(s.latency_ms[p], q) for q in qs),
                    *(_pct(s.upstream_ms[p], q) for q in qs),
                ]
                for p in partners
            ],
        )
    )
    parts.append("<h2>Savings</h2>")
    parts.append(
        _table(
            [
                "partner",
                "cost (USD)",
                "saved by prompt caching, net (USD)",
                "saved by batching (USD)",
            ],
            [
                [p, round(s.cost[p], 6), round(s.cache_savings[p], 6), round(s.batch_savings[p], 6)]
                for p in partners
            ],
        )
    )
    parts.append(
        "<p class='note'>Against list price. Prompt caching: reads billed at 0.1x the input "
        "price instead of 1x, less the premiums of the writes (1.25x for 5 minutes, 2x for an "
        "hour): negative when writes were not read back. Batching: the Message Batches API's "
        "half price (<code>priority: batch</code>).</p></body></html>\n"
    )
    return "".join(parts)


def _grouped(title: str, partners: list[str], s: Summary, qs: Sequence[int]) -> str:
    """Side-by-side bars (percentiles are not additive: never stacked)."""
    fig, ax = _axes(title, "ms", not partners)
    width = 0.8 / len(qs)
    for i, q in enumerate(qs):
        xs = [j + i * width for j in range(len(partners))]
        ax.bar(xs, [(_pct(s.latency_ms[p], q) or 0.0) for p in partners], width, label=f"p{q}")
    ax.set_xticks([j + width * (len(qs) - 1) / 2 for j in range(len(partners))], partners)
    ax.legend(fontsize=8, frameon=False)
    return f'<figure class="chart">{_svg(fig)}</figure>'
