"""Every PromQL expression in a Grafana dashboard, ready to send to Prometheus.

A dashboard is only as good as its queries, and Grafana says nothing about a
query that matches no series. This module pulls out each expression (panel
targets, template-variable queries, annotation queries), substitutes the
template variables and Grafana's built-in `$__` intervals, and turns Grafana's
`label_values(...)` helper into the PromQL it stands for, so a test can ask a
live Prometheus whether each one parses and returns data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/stream-detector.json"

# Values for Grafana's built-in variables, short enough for a test Prometheus
# that has scraped for only a minute or so; pass others in `variables` to
# override them.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}

# $name, ${name}, ${name:format} and the deprecated [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((.+)\)\s*$", re.S)


@dataclass(frozen=True)
class DashboardQuery:
    where: str
    """Which part of the dashboard it came from, for a failure message."""
    expr: str
    """The PromQL, with every variable substituted."""
    instant: bool
    """True when Grafana runs it as an instant query (variables, instant targets)."""


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    r"""Replace Grafana variables; an unknown one is an error, not a silent `$x` in PromQL.

    >>> substitute('rate(x{service="$service"}[$__rate_interval])', {"service": "shop"})
    'rate(x{service="shop"}[1m])'
    >>> substitute('x{s=~"${service:regex}"}', {"service": "a.b"})
    'x{s=~"a\\\\.b"}'
    """
    values = {**BUILTIN_VARIABLES, **variables}

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(3) or match.group(4)
        if name not in values:
            raise KeyError(f"dashboard variable ${name} has no value to substitute")
        value = values[name]
        if match.group(2) == "regex":
            # Grafana escapes regex metacharacters; PromQL strings then need
            # the backslashes themselves escaped.
            value = re.escape(value).replace("\\", "\\\\")
        return value

    return _VARIABLE.sub(replace, expr)


def variable_query_to_promql(query: str) -> str:
    """A template variable's query as plain PromQL.

    >>> variable_query_to_promql("label_values(stream_detector_service_reports, service)")
    'group by (service) (stream_detector_service_reports)'
    >>> variable_query_to_promql("query_result(topk(5, up))")
    'topk(5, up)'
    """
    if match := _LABEL_VALUES.match(query):
        selector, label = match.groups()
        if selector is None:
            # label_values(label) asks for the label across every series.
            selector = f'{{{label}!=""}}'
        return f"group by ({label}) ({selector})"
    if match := _QUERY_RESULT.match(query):
        return match.group(1)
    raise ValueError(f"variable query {query!r} is neither label_values(...) nor query_result(...)")


def _variable_query_text(variable: Mapping) -> str:
    query = variable.get("query")
    if isinstance(query, Mapping):
        query = query.get("query")
    return query or variable.get("definition") or ""


def _panels(panels: list) -> Iterator[dict]:
    for panel in panels:
        yield panel
        # A collapsed row keeps its panels inside it.
        yield from _panels(panel.get("panels") or [])


def _is_prometheus(datasource: object) -> bool:
    # Targets without their own datasource inherit the panel's; the built-in
    # "-- Grafana --" annotation source holds no PromQL.
    if datasource is None or isinstance(datasource, str):
        return datasource != "-- Grafana --"
    return datasource.get("type", "prometheus") == "prometheus"


def dashboard_queries(
    dashboard: Mapping | str | Path = DASHBOARD, variables: Mapping[str, str] | None = None
) -> list[DashboardQuery]:
    """All PromQL of a dashboard, with `variables` (e.g. ``{"service": "shop"}``) filled in."""
    if not isinstance(dashboard, Mapping):
        dashboard = json.loads(Path(dashboard).read_text())
    variables = dict(variables or {})
    found: list[DashboardQuery] = []

    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        name = variable.get("name", "?")
        expr = variable_query_to_promql(_variable_query_text(variable))
        found.append(DashboardQuery(f"variable {name}", substitute(expr, variables), True))

    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("builtIn") or not _is_prometheus(annotation.get("datasource")):
            continue
        expr = annotation.get("expr") or (annotation.get("target") or {}).get("expr")
        name = annotation.get("name", "?")
        found.append(DashboardQuery(f"annotation {name}", substitute(expr or "", variables),
                                    False))

    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets") or []:
            if not _is_prometheus(target.get("datasource", panel.get("datasource"))):
                continue
            where = f"panel {panel.get('title', '?')!r} target {target.get('refId', '?')}"
            found.append(DashboardQuery(
                where, substitute(target.get("expr") or "", variables),
                bool(target.get("instant")) and not target.get("range", False),
            ))
    return found
