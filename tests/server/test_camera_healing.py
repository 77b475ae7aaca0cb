"""Cameras that fail and come back, over real loopback sockets: an HTTP MJPEG camera in a thread.

The camera can be unplugged (port closed, every connection dropped), plugged back on the same port,
or paused (connections stay open, nothing is sent: the quiet failure the frame-age watchdog exists
for). The pipeline uses a real OpenCV/FFmpeg capture and a real onnxruntime model.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edgecam.server.metrics import EdgecamMetrics
from edgecam.server.pipeline import CameraPipeline, PipelineOptions
from edgecam.server.runtime import load_model
from edgecam.server.runtime.base import LoadedModel
from edgecam.server.sources.opencv import OpenCVSource, OpenCVSourceConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from reliability.mjpeg_camera import MjpegCamera


@pytest.fixture
def model(make_onnx: Callable[..., Path]) -> LoadedModel:
    return load_model(make_onnx(), version="1")


@pytest.fixture
def camera() -> MjpegCamera:
    cam = MjpegCamera()
    cam.start()
    yield cam  # type: ignore[misc]
    cam.stop()


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _counter(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_camera_restarted_on_the_same_port_resumes_within_2_s(
    camera: MjpegCamera, model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    # backoff_max_s=1.0 (default 10): the worst wait after the camera returns is one capped backoff
    # plus an open (~0.05 s), which is what makes "< 2 s" a guarantee rather than luck.
    options = PipelineOptions(backoff_initial_s=0.1, backoff_max_s=1.0, stall_reads=2)
    config = OpenCVSourceConfig(uri=camera.uri, open_timeout_s=2, read_timeout_s=1)
    pipeline = CameraPipeline("ipcam", config, model, metrics, options)
    errors = "edgecam_camera_errors_total"
    with pipeline.subscribe() as subscription:
        pipeline.start()
        try:
            assert _wait_for(lambda: pipeline.status().frames_inferred >= 5), "no frames from the camera"
            camera.stop()
            assert _wait_for(lambda: not pipeline.status().up), "camera still up after unplugging"
            time.sleep(2.5)  # long enough for the backoff to reach its cap
            assert _counter(registry, errors, camera="ipcam", reason="open_failed") >= 3
            while subscription.get(timeout=0) is not None:
                pass
            camera.start()
            restarted, restarted_wall = time.monotonic(), time.time()
            first = subscription.get(timeout=5)
            resumed = time.monotonic() - restarted
        finally:
            pipeline.stop(timeout=2)
    assert first is not None and first.captured_at >= restarted_wall, "no new prediction after replug"
    print(f"\nreplug → first new prediction: {resumed:.3f} s")
    assert resumed < 2.0, f"predictions resumed {resumed:.2f} s after the camera came back"
    assert _counter(registry, "edgecam_camera_reconnects_total", camera="ipcam") >= 3


def test_camera_that_goes_silent_is_detected_within_the_frame_age_limit(
    camera: MjpegCamera, model: LoadedModel, registry: CollectorRegistry, metrics: EdgecamMetrics
) -> None:
    limit = 1.0
    options = PipelineOptions(backoff_initial_s=0.1, backoff_max_s=0.5, max_frame_age_s=limit)
    # A read timeout far above the limit: the pipeline caps it, or the reconnect would wait 10 s.
    config = OpenCVSourceConfig(uri=camera.uri, open_timeout_s=2, read_timeout_s=10)
    pipeline = CameraPipeline("quiet", config, model, metrics, options)
    cam = {"camera": "quiet"}
    with pipeline.subscribe() as subscription:
        pipeline.start()
        try:
            assert _wait_for(lambda: pipeline.status().frames_inferred >= 5), "no frames from the camera"
            camera.sending.clear()  # sockets stay open, nothing arrives
            silent = time.monotonic()
            assert _wait_for(
                lambda: _counter(registry, "edgecam_camera_errors_total", **cam, reason="stalled")
            )
            detected = time.monotonic() - silent
            assert not pipeline.status().up
            assert _wait_for(lambda: _counter(registry, "edgecam_camera_reconnects_total", **cam) >= 1)
            reconnecting = time.monotonic() - silent
            while subscription.get(timeout=0) is not None:
                pass
            camera.sending.set()
            resumed_wall, resumed = time.time(), time.monotonic()
            first = subscription.get(timeout=5)
            back = time.monotonic() - resumed
        finally:
            pipeline.stop(timeout=2)
    print(f"\nsilent → stalled: {detected:.3f} s (limit {limit} s); → reopen: {reconnecting:.3f} s; ", end="")
    print(f"sending again → first prediction: {back:.3f} s")
    assert detected <= limit + 0.3, f"stall detected after {detected:.2f} s; the limit is {limit} s"
    assert reconnecting <= limit + 1.0, "the 10 s read timeout was not capped at the frame-age limit"
    assert first is not None and first.captured_at >= resumed_wall, "no new prediction after resuming"
    assert back < 3.0
    assert _counter(registry, "edgecam_camera_errors_total", **cam, reason="stalled") >= 1


def test_opencv_stream_read_gives_up_at_the_pipeline_limit(camera: MjpegCamera) -> None:
    source = OpenCVSource(OpenCVSourceConfig(uri=camera.uri, read_timeout_s=10))
    source.limit_read_time(0.5)
    source.open()
    try:
        assert source.read() is not None
        camera.sending.clear()
        start = time.monotonic()
        while source.read() is not None:  # whatever FFmpeg had buffered, then the timeout
            assert time.monotonic() - start < 2
        assert 0.3 <= time.monotonic() - start < 1.5
    finally:
        source.close()
