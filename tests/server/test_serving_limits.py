"""The serving core under load, over real loopback sockets: open streams cannot starve unary calls
or health checks, operator limits answer RESOURCE_EXHAUSTED, ports are not shared, shutdown is bounded.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecam.client.load import VECTOR_64_MIB, examine_memory, examine_streams, rss_bytes, vector_model
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc
from edgecam.server.app import EdgecamServer
from edgecam.server.launcher import launch
from edgecam.server.settings import CameraConfig, ModelConfig


@pytest.fixture
def start(
    onnx_builder: Callable[..., Path], tmp_path: Path, serve: Callable[..., EdgecamServer]
) -> Callable[..., EdgecamServer]:
    return lambda **settings: serve(
        models=[ModelConfig(path=onnx_builder(tmp_path / "tiny.onnx"))], **settings
    )


def test_200_open_streams_do_not_starve_unary_calls_or_health(
    onnx_builder: Callable[..., Path], tmp_path: Path
) -> None:
    model = onnx_builder(tmp_path / "tiny.onnx")
    running = launch(["--model", str(model), "--camera", "cam=synthetic:fps=10", "--log-level", "WARNING"])
    try:
        rss_before = rss_bytes(running.process.pid)
        found = examine_streams(
            running.grpc_address, running.metrics_url, "cam", "tiny", seconds=3.0, calls=400
        )
        rss_growth = rss_bytes(running.process.pid) - rss_before
    finally:
        assert running.stop() == 0
    print(f"\n{found}; server RSS +{rss_growth / 2**20:.0f} MiB")
    assert found["stream_errors"] == 0
    # Starvation is what this proves can fail (on the thread-pool server every call timed out with 16
    # streams open); the latency figures the issue asks for (p99 within 2x idle, health < 100 ms)
    # are measured by bench/reliability/streams.py, not asserted here: on a loaded 2-core machine
    # the stream clients share the cores with the server and a timed bound would be noise.
    assert found["infer_p99_streams_ms"] < 1000 and found["health_max_ms"] < 1000
    assert found["camera_fps"] >= 9.0 and found["frames_in_window"] >= 20
    assert found["worst_reader_share"] >= 0.9
    assert found["stream_predictions_dropped"] > 0, "the silent subscribers' drops are counted"
    assert rss_growth < 64 * 1024 * 1024


def test_streams_over_max_streams_are_refused_in_one_line(start: Callable[..., EdgecamServer]) -> None:
    server = start(cameras=[CameraConfig(name="cam", source="synthetic:fps=10")], max_streams=2)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = v1_grpc.CameraServiceStub(channel)
        held = [stub.StreamPredictions(v1.StreamPredictionsRequest(camera="cam")) for _ in range(2)]
        for call in held:
            next(call)  # both open and streaming
        with pytest.raises(grpc.RpcError) as caught:
            next(stub.StreamPredictions(v1.StreamPredictionsRequest(camera="cam"), timeout=5))
        for call in held:
            call.cancel()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_streams" in caught.value.details() and "\n" not in caught.value.details()
    refused = server.registry.get_sample_value("edgecam_requests_refused_total", {"reason": "max_streams"})
    assert refused == 1


def test_health_answers_per_service(start: Callable[..., EdgecamServer]) -> None:
    server = start()
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "edgecam.v1.CameraService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_two_servers_cannot_bind_the_same_port(start: Callable[..., EdgecamServer]) -> None:
    first = start()
    with pytest.raises(OSError, match="cannot bind gRPC") as caught:
        start(grpc_port=first.grpc_port)
    assert str(first.grpc_port) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("which", ["grpc", "metrics"])
def test_port_in_use_stops_serve_with_one_line_naming_it(
    which: str, onnx_builder: Callable[..., Path], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"grpc": 0, "metrics": 0, which: port}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgecam.server",
                "--model",
                str(onnx_builder(tmp_path / "tiny.onnx")),
                "--grpc-port",
                str(ports["grpc"]),
                "--metrics-port",
                str(ports["metrics"]),
                "--log-level",
                "WARNING",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert str(port) in lines[0] and which in lines[0]


def test_sigterm_with_silent_cameras_exits_0_within_3_s(
    onnx_builder: Callable[..., Path], tmp_path: Path
) -> None:
    """Network cameras that accept the connection and never send: each capture thread sits in a read."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        cameras = [arg for k in range(4) for arg in ("--camera", f"c{k}=http://127.0.0.1:{port}/c{k}.mjpg")]
        running = launch(["--model", str(onnx_builder(tmp_path / "tiny.onnx")), *cameras])
        # OpenCV opens FFmpeg streams under one process-wide lock: the first silent camera holds it,
        # the other three wait for it. Either way every capture thread is stuck in native code.
        accepted = _accept(silent, 1, timeout=10)
        time.sleep(0.5)
        began = time.monotonic()
        code = running.stop(timeout=30)
        took = time.monotonic() - began
        for connection in accepted:
            connection.close()
    print(f"\nSIGTERM with 4 silent cameras: exit {code} in {took:.2f} s")
    assert code == 0, "\n".join(running.log)
    assert took < 3.0


def _accept(listener: socket.socket, count: int, timeout: float) -> list[socket.socket]:
    """Accept `count` connections (cameras connecting), never answering them."""
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    while len(accepted) < count and time.monotonic() < deadline:
        try:
            accepted.append(listener.accept()[0])
        except TimeoutError:
            continue
    assert len(accepted) == count, f"only {len(accepted)} of {count} cameras connected"
    return accepted


def test_stop_ends_streams_even_with_threads_blocked(start: Callable[..., EdgecamServer]) -> None:
    """stop() is bounded by camera_stop_seconds for all cameras together, not per camera."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        cameras = [CameraConfig(name=f"c{k}", source=f"http://127.0.0.1:{port}/s{k}") for k in range(3)]
        server = start(cameras=cameras, camera_stop_seconds=0.5)
        accepted = _accept(silent, 1, timeout=10)
        began = time.monotonic()
        server.stop()
        took = time.monotonic() - began
        for connection in accepted:
            connection.close()
    assert took < 2.0, f"stop took {took:.2f} s"
    assert threading.active_count() < 200


def test_16_concurrent_64_mib_requests_stay_in_the_memory_budget(
    onnx_builder: Callable[..., Path], tmp_path: Path
) -> None:
    tiny, vsum = onnx_builder(tmp_path / "tiny.onnx"), vector_model(tmp_path / "vsum.onnx", VECTOR_64_MIB)
    config = tmp_path / "edgecam.yaml"
    config.write_text(
        f"models: [{{path: '{tiny}'}}, {{path: '{vsum}'}}]\n"
        "cameras: [{name: cam, source: 'synthetic:fps=20', model: tiny}]\n"
        f"request_memory_budget_bytes: {512 * 1024 * 1024}\n"
    )
    running = launch(["--config", str(config), "--log-level", "WARNING"])
    try:
        time.sleep(1.0)  # the camera reaches its rate
        found = examine_memory(
            running.grpc_address,
            running.metrics_url,
            running.process.pid,
            "cam",
            "vsum",
            "x",
            VECTOR_64_MIB,
            seconds=3.0,
        )
    finally:
        assert running.stop() == 0
    print(f"\n{found}")
    statuses = found["statuses"]
    assert isinstance(statuses, dict) and set(statuses) <= {"OK", "RESOURCE_EXHAUSTED"}, statuses
    assert statuses.get("OK", 0) >= 1 and statuses.get("RESOURCE_EXHAUSTED", 0) >= 1
    peak, fps = found["rss_peak_growth_bytes"], found["camera_fps_during"]
    assert isinstance(peak, int) and isinstance(fps, float)
    assert peak < 512 * 1024 * 1024, found
    # The camera keeps 90% of its rate: raw tensors are read without copies under the GIL
    # (server/grpc/wire.py); with three 64 MiB copies per request it fell to 73-89%.
    assert fps >= 0.9 * 20, found
