"""Camera pipelines with real sources, a real onnxruntime model and real threads."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.pipeline import CameraPipeline, PipelineOptions, Prediction
from edgecam.server.runtime import load_model
from edgecam.server.runtime.base import LoadedModel
from edgecam.server.sources import Frame, FrameSource
from edgecam.server.sources.opencv import OpenCVSourceConfig
from edgecam.server.sources.synthetic import SyntheticSourceConfig

FAST = PipelineOptions(backoff_initial_s=0.05, backoff_max_s=0.2, stall_reads=2)


@pytest.fixture
def model(make_onnx: Callable[..., Path]) -> LoadedModel:
    return load_model(make_onnx(), version="1")


class SlowRuntime:
    """Wraps a runtime and takes at least `delay` seconds per run: a model slower than its camera."""

    name = "slow"

    def __init__(self, inner: object, delay: float) -> None:
        self._inner, self._delay = inner, delay

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self._delay)
        return self._inner.run(inputs)  # type: ignore[attr-defined]

    def memory_bytes(self) -> int:
        return 0


class FlakySource(FrameSource):
    """Gives `frames` black frames per connection, then goes silent (read → None)."""

    kind = "flaky"

    def __init__(self, frames: int) -> None:
        self.frames, self.opens, self._left = frames, 0, 0

    def open(self) -> None:
        self.opens += 1
        self._left = self.frames

    def read(self) -> Frame | None:
        time.sleep(0.002)
        if self._left <= 0:
            return None
        self._left -= 1
        return Frame(np.zeros((28, 28), np.uint8), time.time())

    def close(self) -> None:
        self._left = 0


def _take(subscription: object, n: int, timeout: float = 5.0) -> list[Prediction]:
    got = list(itertools.islice(subscription.iter(idle_timeout=timeout), n))  # type: ignore[attr-defined]
    assert len(got) == n, f"only {len(got)} of {n} predictions within {timeout} s"
    return got


def _stop_quickly(pipeline: CameraPipeline, limit: float = 1.0) -> None:
    start = time.monotonic()
    pipeline.stop(timeout=2.0)
    assert time.monotonic() - start < limit, f"stop() took {time.monotonic() - start:.2f} s"


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_synthetic_camera_streams_predictions_to_two_subscribers(
    samples_npz: Path, model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    source = SyntheticSourceConfig(fps=200, seed=1, samples=samples_npz)
    pipeline = CameraPipeline("synth", source, model, metrics)
    first, second = pipeline.subscribe(), pipeline.subscribe()
    pipeline.start()
    try:
        a, b = _take(first, 30), _take(second, 30)
        status = pipeline.status()
        assert registry.get_sample_value("edgecam_camera_up", {"camera": "synth"}) == 1
    finally:
        _stop_quickly(pipeline)
    assert {p.frame_index for p in a} & {p.frame_index for p in b}, "both subscribers see the same frames"
    for prediction in a:
        assert prediction.camera == "synth" and prediction.label is not None
        assert prediction.top_k[0].index == prediction.label  # the template model is always right
        assert prediction.top_k[0].label == f"class{prediction.label}" and len(prediction.top_k) == 3
        assert set(prediction.latency) == {"capture", "preprocess", "infer", "postprocess", "total"}
        assert prediction.latency["total"] >= prediction.latency["infer"] > 0
        assert prediction.captured_at <= prediction.inferred_at
        assert (prediction.model_name, prediction.model_version) == ("tiny", "1")
    indices = [p.frame_index for p in a]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert status.up and status.frames_inferred >= 30 and status.subscribers == 2
    assert status.source.startswith("synthetic") and status.online_accuracy == 1.0
    assert status.last_frame_age_seconds is not None and status.last_frame_age_seconds < 1

    cam = {"camera": "synth"}
    frames = registry.get_sample_value("edgecam_frames_total", cam)
    captured = registry.get_sample_value("edgecam_frames_captured_total", cam)
    dropped = registry.get_sample_value("edgecam_frames_dropped_total", {**cam, "reason": "superseded"})
    assert frames >= 30 and captured >= frames
    assert captured - frames - dropped in (0, 1)  # at most one frame left in the slot at stop
    assert registry.get_sample_value("edgecam_online_accuracy_ratio", cam) == 1.0
    assert registry.get_sample_value("edgecam_predictions_correct_total", cam) == frames
    infer = {**cam, "stage": "infer"}
    assert registry.get_sample_value("edgecam_stage_latency_seconds_count", infer) == frames
    assert registry.get_sample_value("edgecam_camera_up", cam) == 0
    assert registry.get_sample_value("edgecam_camera_fps", cam) > 0
    assert first.closed and second.closed
    assert len(list(first)) <= 16 and first.get(timeout=1) is None  # drained, then ended at once


def test_frames_a_slow_model_misses_are_counted_as_superseded(
    samples_npz: Path, model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    slow = LoadedModel(**{**vars(model), "runtime": SlowRuntime(model.runtime, 0.02)})
    pipeline = CameraPipeline("busy", SyntheticSourceConfig(fps=500, samples=samples_npz), slow, metrics)
    with pipeline.subscribe() as subscription:
        pipeline.start()
        predictions = _take(subscription, 8)
        _stop_quickly(pipeline)
    superseded = {"camera": "busy", "reason": "superseded"}
    dropped = registry.get_sample_value("edgecam_frames_dropped_total", superseded)
    assert dropped > 8
    gaps = np.diff([p.frame_index for p in predictions])
    assert gaps.max() > 1  # the newest frame wins, so the inferred indices skip
    assert pipeline.status().frames_dropped == dropped


def test_slow_subscriber_loses_its_oldest_predictions(
    samples_npz: Path, model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    options = PipelineOptions(subscriber_queue=3)
    source = SyntheticSourceConfig(fps=0, samples=samples_npz)
    pipeline = CameraPipeline("cam", source, model, metrics, options)
    lazy, keen = pipeline.subscribe(), pipeline.subscribe()
    pipeline.start()
    try:
        seen = _take(keen, 20)
    finally:
        _stop_quickly(pipeline)
    assert lazy.dropped > 0
    lost = registry.get_sample_value("edgecam_stream_predictions_dropped_total", {"camera": "cam"})
    assert lost >= lazy.dropped
    kept = list(lazy)  # a closed subscription still hands out what it holds, then ends
    assert len(kept) == 3 and kept[-1].frame_index >= seen[-1].frame_index


def test_camera_that_cannot_open_keeps_retrying(
    model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    pipeline = CameraPipeline("gone", OpenCVSourceConfig(uri="/dev/video97"), model, metrics, FAST)
    pipeline.start()
    time.sleep(0.8)
    cam = {"camera": "gone"}
    open_failed = {**cam, "reason": "open_failed"}
    try:
        assert registry.get_sample_value("edgecam_camera_up", cam) == 0
        errors = registry.get_sample_value("edgecam_camera_errors_total", open_failed)
        reconnects = registry.get_sample_value("edgecam_camera_reconnects_total", cam)
        assert errors >= 4 and reconnects in (errors - 1, errors)
        time.sleep(0.3)
        assert registry.get_sample_value("edgecam_camera_errors_total", open_failed) > errors
        status = pipeline.status()
        assert not status.up and status.frames_inferred == 0 and status.last_frame_age_seconds is None
        assert "/dev/video97" in status.source
    finally:
        _stop_quickly(pipeline, 0.5)
    assert registry.get_sample_value("edgecam_frames_total", cam) == 0


def test_stalled_camera_is_reopened(
    model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    source = FlakySource(frames=5)
    pipeline = CameraPipeline("flaky", source, model, metrics, FAST)
    pipeline.start()
    try:
        deadline = time.monotonic() + 3
        while source.opens < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        _stop_quickly(pipeline)
    cam = {"camera": "flaky"}
    assert source.opens >= 3
    assert registry.get_sample_value("edgecam_camera_errors_total", {**cam, "reason": "stalled"}) >= 2
    assert registry.get_sample_value("edgecam_camera_reconnects_total", cam) >= 2
    assert registry.get_sample_value("edgecam_frames_captured_total", cam) >= 10


def test_max_fps_limits_the_inference_rate(
    samples_npz: Path, model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    options = PipelineOptions(max_fps=20)
    source = SyntheticSourceConfig(fps=0, samples=samples_npz)
    pipeline = CameraPipeline("capped", source, model, metrics, options)
    pipeline.start()
    time.sleep(0.5)
    _stop_quickly(pipeline)
    frames = registry.get_sample_value("edgecam_frames_total", {"camera": "capped"})
    assert 5 <= frames <= 12


def test_set_model_swaps_between_frames(
    samples_npz: Path, model: LoadedModel, make_onnx: Callable[..., Path], metrics: EdgecamMetrics
) -> None:
    other = load_model(make_onnx("second.onnx"), name="second", version="7")
    pipeline = CameraPipeline("swap", SyntheticSourceConfig(fps=200, samples=samples_npz), model, metrics)
    with pipeline.subscribe() as subscription:
        pipeline.start()
        try:
            assert _take(subscription, 1)[0].model_name == "tiny"
            pipeline.set_model(other)
            later = _take(subscription, 5)
        finally:
            _stop_quickly(pipeline)
    assert (later[-1].model_name, later[-1].model_version) == ("second", "7")
    assert pipeline.status().model_name == "second"


class BrokenRuntime:
    name = "broken"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("kernel exploded")

    def memory_bytes(self) -> int:
        return 0


def test_failing_inference_is_counted_and_survived(
    samples_npz: Path, model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    broken = LoadedModel(**{**vars(model), "runtime": BrokenRuntime()})
    pipeline = CameraPipeline("oops", SyntheticSourceConfig(fps=100, samples=samples_npz), broken, metrics)
    with pipeline.subscribe() as subscription:
        pipeline.start()
        try:
            time.sleep(0.2)
            failed = registry.get_sample_value(
                "edgecam_frames_dropped_total", {"camera": "oops", "reason": "infer_failed"}
            )
            assert failed and failed >= 3
            pipeline.set_model(model)  # the inference thread is still alive
            assert _take(subscription, 2)
        finally:
            _stop_quickly(pipeline)


class HangingSource(FrameSource):
    """Frames every 5 ms until `hang` is set; then one read blocks for `hang_s`, like a stuck driver."""

    kind = "hanging"

    def __init__(self, hang_s: float) -> None:
        self.hang_s, self.opens = hang_s, 0
        self.hang = threading.Event()
        self.read_returned_at: float | None = None

    def open(self) -> None:
        self.opens += 1

    def read(self) -> Frame | None:
        if self.hang.is_set():
            self.hang.clear()
            time.sleep(self.hang_s)
            self.read_returned_at = time.monotonic()
            return None
        time.sleep(0.005)
        return Frame(np.zeros((28, 28), np.uint8), time.time())

    def close(self) -> None:
        pass


def test_frame_age_watchdog_fires_while_a_read_is_still_blocked(
    model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    limit = 0.4
    source = HangingSource(hang_s=1.5)
    options = PipelineOptions(backoff_initial_s=0.05, max_frame_age_s=limit)
    pipeline = CameraPipeline("stuck", source, model, metrics, options)
    stalled = {"camera": "stuck", "reason": "stalled"}
    pipeline.start()
    try:
        assert _wait_for(lambda: pipeline.status().frames_inferred >= 3)
        source.hang.set()
        hung_at = time.monotonic()
        assert _wait_for(lambda: registry.get_sample_value("edgecam_camera_errors_total", stalled) == 1)
        detected = time.monotonic() - hung_at
        assert detected <= limit + 0.3, f"stall detected after {detected:.2f} s (limit {limit} s)"
        assert source.read_returned_at is None, "the watchdog must not wait for the blocked read"
        assert not pipeline.status().up
        # Once the read returns, the source is reopened and frames flow again; the stall counts once.
        before = pipeline.status().frames_inferred
        assert _wait_for(lambda: pipeline.status().frames_inferred > before + 3, timeout=3)
        assert source.opens == 2 and pipeline.status().up
    finally:
        _stop_quickly(pipeline)
    assert registry.get_sample_value("edgecam_camera_errors_total", stalled) == 1


def test_cameras_share_one_model(
    samples_npz: Path, model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    pipelines = [
        CameraPipeline(f"cam{i}", SyntheticSourceConfig(fps=0, seed=i, samples=samples_npz), model, metrics)
        for i in range(3)
    ]
    subscriptions = [p.subscribe() for p in pipelines]
    for pipeline in pipelines:
        pipeline.start()
    try:
        batches = [_take(s, 30) for s in subscriptions]
    finally:
        for pipeline in pipelines:
            _stop_quickly(pipeline)
    for batch in batches:
        assert all(p.top_k[0].index == p.label for p in batch)
    assert {p.camera for batch in batches for p in batch} == {"cam0", "cam1", "cam2"}


class OddSource(FlakySource):
    """Five-channel frames, which preprocessing refuses."""

    def read(self) -> Frame | None:
        time.sleep(0.005)
        return Frame(np.zeros((28, 28, 5), np.uint8), time.time())


@pytest.mark.parametrize("ahead", [True, False])
def test_frames_that_cannot_be_preprocessed_are_dropped_with_a_reason(
    ahead: bool, model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    options = PipelineOptions(preprocess_ahead=ahead)
    pipeline = CameraPipeline("odd", OddSource(frames=0), model, metrics, options)
    pipeline.start()
    reason = {"camera": "odd", "reason": "preprocess_failed"}
    try:
        assert _wait_for(
            lambda: (registry.get_sample_value("edgecam_frames_dropped_total", reason) or 0) >= 3
        )
        assert pipeline.status().frames_inferred == 0 and pipeline.status().up
    finally:
        _stop_quickly(pipeline)


@pytest.mark.parametrize("ahead", [True, False])
def test_preprocess_latency_is_reported_wherever_it_runs(
    ahead: bool, samples_npz: Path, model: LoadedModel, metrics: EdgecamMetrics
) -> None:
    options = PipelineOptions(preprocess_ahead=ahead)
    pipeline = CameraPipeline(
        "pre", SyntheticSourceConfig(fps=100, samples=samples_npz), model, metrics, options
    )
    with pipeline.subscribe() as subscription:
        pipeline.start()
        try:
            predictions = _take(subscription, 10)
        finally:
            _stop_quickly(pipeline)
    for p in predictions:
        stages = (
            p.latency["capture"] + p.latency["preprocess"] + p.latency["infer"] + p.latency["postprocess"]
        )
        assert p.latency["preprocess"] > 0 and p.top_k[0].index == p.label
        assert stages == pytest.approx(p.latency["total"], abs=2e-3)
