"""Deployment files refer only to metrics the service exports (a renamed metric would silently blank a panel)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from app.serve.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[1]


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update({f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum", "total", "info")})
    return names


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\bsbnn_[a-z_]+", text)) - {"sbnn_"}


def test_dashboard_and_rules_use_exported_metrics() -> None:
    exported = exported_names()
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/sbnn.json").read_text())
    expressions = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    rules = (ROOT / "deploy/prometheus/rules.yml").read_text()
    for source, text in (("dashboard", expressions), ("rules", rules)):
        names = {n for n in referenced(text) if not n[0].isupper()}
        assert names, source
        assert names <= exported, f"{source} refers to unknown metrics: {sorted(names - exported)}"


def test_compose_wires_the_three_services() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    for service in ("sbnn:", "prometheus:", "grafana:"):
        assert f"\n  {service}" in compose
    assert "sbnn:8000" in (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile and "/v2/health/ready" in dockerfile and "USER 10001" in dockerfile
