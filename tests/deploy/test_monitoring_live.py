"""A real Prometheus with deploy/prometheus's rules scrapes a real edgecam server found via file_sd.

Every query of every dashboard panel (template variables substituted with the values Prometheus
knows) must return data, and EdgecamCameraDown must fire for the unreachable camera. ~25 s.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_helpers import (
    DASHBOARD,
    PROMETHEUS,
    fast_prometheus_config,
    needs_prometheus,
)

from edgecam.client.client import EdgecamClient
from edgecam.models import fashion_cnn
from edgecam.server.launcher import RunningServer, launch

pytestmark = [needs_prometheus, pytest.mark.timeout(180)]

HOST = "edge-test"  # the inventory name: becomes the `instance` label
SCRAPE_S = 1
# Grafana's $__rate_interval is at least 4 scrape intervals.
RATE_INTERVAL = f"{4 * SCRAPE_S}s"
# Series the test server does not export (no shadow mode for a plain .onnx model): their queries may
# be empty, unless the server starts exporting them, then they must return data like the rest.
OPTIONAL_METRICS = ("edgecam_shadow_agreement_ratio",)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = launch(
        [
            "--model",
            str(fashion_cnn.onnx_path()),
            "--camera",
            "synth=synthetic:fps=30",
            "--camera",
            "lost=http://127.0.0.1:9/stream.mjpg",  # nothing listens: stays down
        ]
    )
    try:
        images, _ = fashion_cnn.load_samples()
        with EdgecamClient(running.grpc_address) as client:  # ModelInfer traffic for the request panels
            for image in images[:5]:
                client.classify(fashion_cnn.MODEL_NAME, image)
        yield running
    finally:
        running.stop()


def _fast_copy(workdir: Path, metrics_address: str) -> Path:
    """Prometheus config for the test server: one inventory host at the server's metrics address."""
    host, port = metrics_address.rsplit(":", 1)
    inventory = {
        "cameras": {
            "children": {
                "x86_64": {"hosts": {HOST: {"ansible_host": host, "edgecam_metrics_port": int(port)}}}
            }
        }
    }
    (workdir / "inventory.yml").write_text(yaml.safe_dump(inventory))
    return fast_prometheus_config(workdir, workdir / "inventory.yml", SCRAPE_S)


@pytest.fixture(scope="module")
def prometheus(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("prometheus")
    config = _fast_copy(workdir, server.metrics_address)
    port = _free_port()
    process = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return None  # not up yet
    return body.get("data") if body.get("status") == "success" else None


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    data = _get(base, "/api/v1/query", query=expr)
    return data["result"] if isinstance(data, dict) else []


def _poll(fetch: Callable[[], Any], deadline: float) -> Any:
    """Call fetch() until it returns something truthy or the deadline passes (Prometheus hands new
    targets to its scraper in 5 s batches: poll, never sleep a fixed time)."""
    while True:
        result = fetch()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def _variable_values(base: str, deadline: float) -> dict[str, list[str]]:
    """Evaluate the dashboard's label_values(metric, label) variables in order, as Grafana would."""
    values: dict[str, list[str]] = {}
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
        assert match, f"variable {var['name']}: unexpected query {var['query']}"
        selector = _substitute(match.group(1), values)
        label_path = f"/api/v1/label/{match.group(2)}/values"
        found = _poll(partial(_get, base, label_path, **{"match[]": selector}), deadline)
        assert found, f"variable {var['name']}: {var['query']} has no values"
        values[var["name"]] = sorted(found)
    return values


def _substitute(expr: str, values: dict[str, list[str]]) -> str:
    """What Grafana sends for `=~"$var"` with "All" selected: the values as a regex alternation.
    Regex escapes are doubled because the regex sits inside a PromQL string ("edge\\-test")."""
    for name, options in values.items():
        alternation = "|".join(re.escape(o).replace("\\", "\\\\") for o in options)
        expr = expr.replace(f"${name}", f"({alternation})")
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def test_every_panel_query_returns_data_and_camera_down_fires(prometheus: str, server: RunningServer) -> None:
    deadline = time.monotonic() + 45
    values = _variable_values(prometheus, deadline)
    assert values["instance"] == [HOST] and values["target"] == ["x86_64"]
    assert values["camera"] == ["lost", "synth"] and values["model"] == [fashion_cnn.MODEL_NAME]

    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        exported = response.read().decode()
    empty = []
    board = json.loads(DASHBOARD.read_text())
    rows = [p.get("panels", []) if p["type"] == "row" else [p] for p in board["panels"]]
    for panel in (p for row in rows for p in row):
        for target in panel["targets"]:
            expr = _substitute(target["expr"], values)
            optional = any(m in expr and f"{m}{{" not in exported for m in OPTIONAL_METRICS)
            if optional:
                continue
            if not _poll(partial(_query, prometheus, expr), deadline):
                empty.append(f"{panel['title']}: {expr}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)

    def camera_down() -> list[dict[str, Any]]:
        data = _get(prometheus, "/api/v1/alerts") or {"alerts": []}
        return [
            a
            for a in data["alerts"]
            if a["labels"]["alertname"] == "EdgecamCameraDown" and a["state"] == "firing"
        ]

    firing = _poll(camera_down, deadline)
    assert firing, "EdgecamCameraDown never fired for the unreachable camera"
    assert [a["labels"]["camera"] for a in firing] == ["lost"]
    assert firing[0]["labels"]["instance"] == HOST
    assert "lost" in firing[0]["annotations"]["summary"]
