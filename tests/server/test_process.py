"""`edgecam serve` as a process: structured logs, clean SIGTERM, start-up errors that name the problem."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edgecam.client.client import EdgecamClient, EdgecamClientError
from edgecam.server.app import EdgecamServer
from edgecam.server.launcher import launch
from edgecam.server.settings import CameraConfig, ModelConfig, ServerSettings


def test_json_logs_and_clean_sigterm(onnx_builder: Callable[..., Path], tmp_path: Path) -> None:
    model = onnx_builder(tmp_path / "tiny.onnx")
    server = launch(["--model", str(model), "--camera", "cam=synthetic:fps=20", "--log-format", "json"])
    code = server.stop()
    assert code == 0, "\n".join(server.log)
    records = [json.loads(line) for line in server.log if line.startswith("{")]
    assert records, "no JSON log lines"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    messages = " ".join(r["message"] for r in records)
    assert "serving gRPC" in messages and "server stopped" in messages


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--camera", "nocolon"], ["NAME=SOURCE"]),
        (["--camera", "x=/no/such/video.avi"], ["/no/such/video.avi"]),
        (["--log-format", "xml"], ["text|json"]),
    ],
)
def test_bad_arguments_stop_start_up_with_a_reason(
    onnx_builder: Callable[..., Path], tmp_path: Path, args: list[str], words: list[str]
) -> None:
    model = onnx_builder(tmp_path / "tiny.onnx")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecam.server",
            "--model",
            str(model),
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    for word in words:
        assert word in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_shutdown_ends_streams_with_a_status(onnx_builder: Callable[..., Path], tmp_path: Path) -> None:
    settings = ServerSettings(
        grpc_port=0,
        metrics_port=0,
        models=[ModelConfig(path=onnx_builder(tmp_path / "tiny.onnx"))],
        cameras=[CameraConfig(name="cam", source="synthetic:fps=20")],
    )
    server = EdgecamServer(settings)
    server.start()
    outcome: list[BaseException | None] = []
    streaming = threading.Event()

    def watch() -> None:
        try:
            with EdgecamClient(f"127.0.0.1:{server.grpc_port}") as client:
                for _ in client.stream("cam"):
                    streaming.set()
            outcome.append(None)
        except EdgecamClientError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=watch)
    thread.start()
    assert streaming.wait(10)
    server.stop()
    thread.join(10)
    assert isinstance(outcome[0], EdgecamClientError)
    assert outcome[0].code == "UNAVAILABLE" and "shutting down" in str(outcome[0])


def test_camera_inference_rate_cap_comes_from_settings(
    onnx_builder: Callable[..., Path], tmp_path: Path
) -> None:
    import itertools
    import time

    settings = ServerSettings(
        grpc_port=0,
        metrics_port=0,
        models=[ModelConfig(path=onnx_builder(tmp_path / "tiny.onnx"))],
        cameras=[CameraConfig(name="cam", source="synthetic:fps=60", max_fps=5)],
    )
    server = EdgecamServer(settings)
    server.start()
    try:
        with EdgecamClient(f"127.0.0.1:{server.grpc_port}") as client:
            stream = client.stream("cam")
            next(stream)
            started = time.monotonic()
            rest = list(itertools.islice(stream, 5))
            rate = len(rest) / (time.monotonic() - started)
    finally:
        server.stop()
    assert 3.5 < rate < 6.5, f"{rate:.1f} predictions/s with max_fps=5 on a 60 fps camera"


def test_a_settings_file_with_a_typed_source_serves_with_env_and_flag_overrides(
    onnx_builder: Callable[..., Path], samples_npz: Path, tmp_path: Path
) -> None:
    """`edgecam serve --config`: a camera whose source is a mapping of typed options, the file's
    nested `cameras` replaced from the environment, a flag over both, in one real server process."""
    model = onnx_builder(tmp_path / "tiny.onnx")
    config = tmp_path / "edgecam.yaml"
    config.write_text(f"models:\n  - path: {model}\ncameras:\n  - name: file\n    source: synthetic\n")
    source = {"kind": "synthetic", "fps": 30, "seed": 4, "size": 56, "samples": str(samples_npz)}
    env = {"EDGECAM_CAMERAS": json.dumps([{"name": "typed", "source": source}])}
    server = launch(["--config", str(config), "--camera", "flagged=synthetic:fps=5"], env=env)
    try:
        with EdgecamClient(server.grpc_address) as client:
            # Flags override the file and the environment: the --camera list replaces theirs.
            assert [c.name for c in client.cameras()] == ["flagged"]
    finally:
        assert server.stop() == 0, "\n".join(server.log)
    server = launch(["--config", str(config)], env=env)
    try:
        with EdgecamClient(server.grpc_address) as client:
            (camera,) = client.cameras()
            assert camera.name == "typed" and "seed=4" in camera.source and "size=56" in camera.source
            predictions = [p for _, p in zip(range(5), client.stream("typed"), strict=False)]
    finally:
        assert server.stop() == 0, "\n".join(server.log)
    # The tiny model classifies every sample right: the samples file from the mapping was used.
    assert all(p.label is not None and p.top_k[0].index == p.label for p in predictions)
