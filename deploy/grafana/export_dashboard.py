"""Write deploy/grafana/sbnn-export.json: the provisioned dashboard in Grafana's "export for sharing" form, to
import into another Grafana (Dashboards > New > Import): its Prometheus datasource is an input (``__inputs``,
``${DS_PROMETHEUS}``) the importer picks, instead of the compose stack's provisioned uid. tests/test_deploy.py
checks the file is this function's output, so the two never drift apart.

    python deploy/grafana/export_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROVISIONED_UID = "prometheus"  # deploy/grafana/provisioning/datasources/prometheus.yml
INPUT = "DS_PROMETHEUS"


def exported(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The provisioned dashboard with its datasource as an import input."""

    def replace(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "prometheus" and node.get("uid") == PROVISIONED_UID:
                return {"type": "prometheus", "uid": f"${{{INPUT}}}"}
            return {key: replace(value) for key, value in node.items()}
        if isinstance(node, list):
            return [replace(value) for value in node]
        return node

    inputs = [
        {
            "name": INPUT,
            "label": "Prometheus",
            "description": "The Prometheus that scrapes sbnn's /metrics",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    requires = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
    ]
    body = replace(dashboard)
    body["id"] = None  # Grafana assigns one on import
    return {"__inputs": inputs, "__requires": requires, **body}


def main() -> None:
    dashboard = json.loads((HERE / "dashboards" / "sbnn.json").read_text())
    (HERE / "sbnn-export.json").write_text(json.dumps(exported(dashboard), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
