"""The operations files under deploy/: the Grafana dashboard's queries and the
Prometheus alert rules, read the way the tests check them against a real
Prometheus (every query must return data from a worker under load)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "claude-pipeline.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

#: Grafana's variables, as a query sent straight to Prometheus needs them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$partner": ".*"}

_COMPARISON = re.compile(r"^(?P<quantity>.+?)\s*(?:>|<|>=|<=|==|!=)\s*(?P<threshold>[0-9.e+-]+)$")


@dataclass(frozen=True)
class Query:
    where: str  # "panel: <title> [A]" or "alert: <name>"
    expr: str


def dashboard_queries(path: Path = DASHBOARD) -> list[Query]:
    """Every panel target's query, with Grafana's variables filled in."""
    dashboard = json.loads(path.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append(Query(f"panel: {panel['title']} [{target['refId']}]", expr))
    return out


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    import yaml  # a dev dependency: only tests and ops tooling read these files

    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def alert_quantities(path: Path = ALERTS) -> list[Query]:
    """What each alert compares with its threshold: that part must return data
    from a healthy pipeline (the comparison itself, rightly, returns nothing)."""
    out = []
    for rule in alert_rules(path):
        match = _COMPARISON.fullmatch(" ".join(rule["expr"].split()))
        if match is None:
            raise ValueError(f"alert {rule['alert']}: not `<quantity> <op> <threshold>`")
        out.append(Query(f"alert: {rule['alert']}", match["quantity"]))
    return out


def metric_names(expr: str) -> set[str]:
    """The pipeline metric names a query uses (without histogram/counter suffixes)."""
    names = set(re.findall(r"\b(claude_[a-z_]+)", expr))
    return {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in names}
