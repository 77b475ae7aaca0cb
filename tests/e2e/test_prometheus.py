"""A real Prometheus (Debian package) scrapes a real edgecam server."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecam.server.launcher import RunningServer

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="needs Debian's prometheus (`make test` installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: edgecam\n"
        f"    static_configs:\n      - targets: ['{server.metrics_address}']\n"
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],  # type: ignore[list-item]
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _query(base: str, promql: str) -> list[dict]:  # type: ignore[type-arg]
    url = f"{base}/api/v1/query?query={urllib.parse.quote(promql)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return []  # not up yet
    return body["data"]["result"] if body.get("status") == "success" else []


def _poll(base: str, promql: str, deadline_s: float = 30.0) -> list[dict]:  # type: ignore[type-arg]
    # Prometheus hands targets to its scraper in 5 s batches: poll with a deadline, never sleep blindly.
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        result = _query(base, promql)
        if result:
            return result
        time.sleep(0.5)
    return []


def test_prometheus_scrapes_frames_and_latency(prometheus: str) -> None:
    frames = _poll(prometheus, 'edgecam_frames_total{camera="synth"} > 0')
    assert frames, "Prometheus never saw edgecam_frames_total > 0 for camera synth"
    buckets = _poll(
        prometheus, 'edgecam_stage_latency_seconds_bucket{camera="synth",stage="infer",le="1.0"} > 0'
    )
    assert buckets, "no infer-latency histogram samples reached Prometheus"
    p99 = _poll(
        prometheus, 'histogram_quantile(0.99, rate(edgecam_stage_latency_seconds_bucket{stage="infer"}[10s]))'
    )
    assert p99 and float(p99[0]["value"][1]) > 0
    accuracy = _poll(prometheus, 'edgecam_online_accuracy_ratio{camera="synth"}')
    assert accuracy and 0.85 <= float(accuracy[0]["value"][1]) <= 1.0
    assert _poll(prometheus, 'edgecam_model_memory_bytes{model="fashion_cnn",kind="weights"} > 0')
    assert _poll(prometheus, 'edgecam_model_memory_bytes{model="fashion_cnn",kind="workspace"}')
    assert _poll(prometheus, "process_resident_memory_bytes > 0")
    agreement = _poll(prometheus, 'edgecam_shadow_agreement_ratio{camera="synth",model="fashion_cnn"}')
    assert agreement, "shadow agreement never reached Prometheus"
    assert float(agreement[0]["value"][1]) >= 0.99, "TVM disagrees with its own fp32 reference"
    assert _poll(prometheus, 'edgecam_shadow_score_drift_count{camera="synth"} > 0')
    down = _poll(prometheus, 'edgecam_camera_up{camera="lost"} == 0')
    assert down, "the unreachable camera should be reported down"
    assert _poll(prometheus, 'edgecam_camera_errors_total{camera="lost"} > 0')


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool")
def test_metrics_pass_promtool_lint(server: RunningServer, tmp_path: Path) -> None:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read()
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True)  # type: ignore[list-item]
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
