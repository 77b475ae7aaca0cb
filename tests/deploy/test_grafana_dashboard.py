"""deploy/grafana: the dashboard is current, valid against @grafana/schema, and provisioned."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from monitoring_helpers import DASHBOARD, GRAFANA_DIR, load_script

jsonschema = pytest.importorskip("jsonschema")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        out.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return out


def test_dashboard_validates_against_grafana_schema() -> None:
    schema = json.loads((GRAFANA_DIR / "schema" / "dashboard.schema.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(dashboard()), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message[:300]}" for e in errors)


def test_committed_dashboard_is_what_the_script_builds() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk==1769699241")
    build = load_script(GRAFANA_DIR / "build_dashboard.py")
    assert build.render() == DASHBOARD.read_text(), "run python deploy/grafana/build_dashboard.py"


def test_dashboard_shape() -> None:
    board = dashboard()
    assert [v["name"] for v in board["templating"]["list"]] == ["target", "instance", "camera", "model"]
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert rows[0]["title"] == "Fleet" and any(r.get("repeat") == "camera" for r in rows)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "edgecam-prometheus"
            # Every per-camera query must follow the variables, or the repeated rows all show the same.
            if "camera" in panel["title"].lower() and "fleet" not in panel["title"].lower():
                assert re.search(r"\$camera|\$instance", target["expr"]), target["expr"]


def test_provisioning_points_at_the_dashboard_datasource() -> None:
    sources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert sources["apiVersion"] == 1
    assert [s["uid"] for s in sources["datasources"]] == ["edgecam-prometheus"]
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "edgecam.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
