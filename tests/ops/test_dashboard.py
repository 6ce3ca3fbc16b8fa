"""The Grafana dashboard (deploy/grafana/prompttune.json) shows every metric the README lists,
and queries only metrics the server exports."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.ops.conftest import ROOT

from prompttune.server._telemetry import ServiceMetrics

DASHBOARD = ROOT / "deploy" / "grafana" / "prompttune.json"
METRIC_NAME = re.compile(r"\b((?:prompttune|process)_[a-z_]+)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names() -> set[str]:
    registry = ServiceMetrics.create(lambda: {}).registry
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def dashboard_queries() -> list[str]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in document["panels"] for target in panel.get("targets", ())]


def test_dashboard_queries_only_exported_metrics() -> None:
    queried = {name for expr in dashboard_queries() for name in METRIC_NAME.findall(expr)}
    assert queried, "the dashboard has no queries"
    assert queried <= exported_names(), queried - exported_names()


def test_dashboard_covers_the_readme_metrics() -> None:
    listed = set(METRIC_NAME.findall((ROOT / "README.md").read_text()))
    assert len(listed) >= 8
    queried = "\n".join(dashboard_queries())
    missing = {name for name in listed if not re.search(rf"\b{name}(_bucket)?\b", queried)}
    assert not missing
    rpc = {"prompttune_rpc_handled_total", "prompttune_rpc_handling_seconds_bucket"}
    assert all(name in queried for name in rpc)
