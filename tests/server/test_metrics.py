"""The metric catalog on a fresh registry: names, labels, scrape-time values, promtool's lint."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edgecam import __version__
from edgecam.server.metrics import LATENCY_BUCKETS, EdgecamMetrics
from edgecam.server.runtime import load_model
from edgecam.server.runtime.base import LoadedModel


@dataclass(frozen=True)
class Snapshot:
    up: bool = True
    fps: float = 12.5
    last_frame_age_seconds: float | None = 0.25
    online_accuracy: float | None = 0.75
    subscribers: int = 2


def test_static_metrics(registry: CollectorRegistry, metrics: EdgecamMetrics) -> None:
    assert registry.get_sample_value("edgecam_build_info", {"version": __version__}) == 1
    assert registry.get_sample_value("process_resident_memory_bytes") > 0
    metrics.observe_request("tiny", "OK", 0.003)
    metrics.observe_request("tiny", "OK", 0.004)
    metrics.observe_request("tiny", "INVALID_ARGUMENT", 0.0001)
    assert registry.get_sample_value("edgecam_requests_total", {"model": "tiny", "code": "OK"}) == 2
    assert registry.get_sample_value("edgecam_request_latency_seconds_count", {"model": "tiny"}) == 3
    bucket = {"model": "tiny", "le": "0.005"}
    assert registry.get_sample_value("edgecam_request_latency_seconds_bucket", bucket) == 3
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 1.0


def test_camera_counters_and_scrape_time_gauges(registry: CollectorRegistry, metrics: EdgecamMetrics) -> None:
    snapshot = Snapshot()
    metrics.watch_camera("door", lambda: snapshot)
    cam = {"camera": "door"}
    assert registry.get_sample_value("edgecam_frames_total", cam) == 0  # exported from the start
    metrics.observe_prediction("door", label=3, top1=3)
    metrics.observe_prediction("door", label=3, top1=1)
    metrics.observe_prediction("door", label=None, top1=1)
    metrics.observe_stages("door", {"infer": 0.004, "total": 0.03})
    assert registry.get_sample_value("edgecam_frames_total", cam) == 3
    assert registry.get_sample_value("edgecam_predictions_labelled_total", cam) == 2
    assert registry.get_sample_value("edgecam_predictions_correct_total", cam) == 1
    assert registry.get_sample_value("edgecam_stage_latency_seconds_count", {**cam, "stage": "infer"}) == 1
    assert registry.get_sample_value("edgecam_camera_up", cam) == 1
    assert registry.get_sample_value("edgecam_camera_fps", cam) == 12.5
    assert registry.get_sample_value("edgecam_camera_last_frame_age_seconds", cam) == 0.25
    assert registry.get_sample_value("edgecam_online_accuracy_ratio", cam) == 0.75
    assert registry.get_sample_value("edgecam_stream_subscribers", cam) == 2
    # Values are read at scrape time; unknown values are left out rather than faked.
    snapshot = Snapshot(up=False, fps=0.0, last_frame_age_seconds=None, online_accuracy=None)
    assert registry.get_sample_value("edgecam_camera_up", cam) == 0
    assert registry.get_sample_value("edgecam_camera_last_frame_age_seconds", cam) is None
    assert registry.get_sample_value("edgecam_online_accuracy_ratio", cam) is None
    metrics.unwatch_camera("door")
    assert registry.get_sample_value("edgecam_camera_up", cam) is None


def test_a_failing_callback_does_not_break_the_scrape(
    registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    def broken() -> Snapshot:
        raise RuntimeError("boom")

    metrics.watch_camera("bad", broken)
    metrics.watch_camera("good", Snapshot)
    assert registry.get_sample_value("edgecam_camera_up", {"camera": "good"}) == 1
    assert registry.get_sample_value("edgecam_camera_up", {"camera": "bad"}) is None


def test_model_memory_is_read_at_scrape_time(
    registry: CollectorRegistry, metrics: EdgecamMetrics, make_onnx: Callable[..., Path]
) -> None:
    models: list[LoadedModel] = []
    metrics.watch_models(lambda: models)
    weights = {"model": "tiny", "version": "1", "kind": "weights"}
    workspace = {"model": "tiny", "version": "1", "kind": "workspace"}
    assert registry.get_sample_value("edgecam_model_memory_bytes", weights) is None
    models.append(load_model(make_onnx()))
    assert (
        registry.get_sample_value("edgecam_model_memory_bytes", weights)
        == models[0].runtime.memory_bytes()
        > 0
    )
    assert (
        registry.get_sample_value("edgecam_model_memory_bytes", workspace) == models[0].workspace_bytes >= 0
    )


def test_names_follow_the_conventions(metrics: EdgecamMetrics, registry: CollectorRegistry) -> None:
    metrics.watch_camera("door", Snapshot)
    for family in registry.collect():
        if family.name.startswith("process_") or family.name.startswith("python_"):
            continue
        assert family.name.startswith("edgecam_"), family.name
        labels = {key for sample in family.samples for key in sample.labels} - {"le"}
        assert labels <= {"camera", "model", "version", "stage", "reason", "code"}, (family.name, labels)
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian prometheus)")
def test_exposition_passes_promtool(metrics: EdgecamMetrics, registry: CollectorRegistry) -> None:
    metrics.watch_camera("door", Snapshot)
    metrics.observe_prediction("door", 1, 1)
    metrics.observe_stages("door", {"infer": 0.01})
    metrics.observe_request("tiny", "OK", 0.01)
    text = generate_latest(registry)
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
