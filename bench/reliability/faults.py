"""Camera faults and shutdown against a real `edgecam serve` process and real MJPEG cameras on loopback.

Each camera is an HTTP MJPEG stream in this process (mjpeg_camera.py) read by the server through
OpenCV/FFmpeg. Faults: the camera is unplugged (port closed, connections dropped) and plugged back
on the same port; the camera goes silent (connections open, nothing sent) and speaks again. For each
the record has the time until the server marks the camera down and the time from the camera's return
until frames are inferred again, read from ListCameras every 20 ms. Then SIGTERM-to-exit time, for
that server (one live camera) and for a server with default limits whose three cameras have all gone
silent (each capture thread then sits in a read that gives up only after max_frame_age_s).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml

from edgecam.models import fashion_cnn
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc
from edgecam.server.launcher import RunningServer, launch

from . import target
from .mjpeg_camera import MjpegCamera

FRAME_AGE_S = 2.0  # the cameras' max_frame_age_s: silence longer than this is a stall
BACKOFF_MAX_S = 1.0
OUTAGE_S = 3.0  # how long each fault lasts


@contextmanager
def _server(cameras: dict[str, MjpegCamera], workdir: Path, limits: bool = True) -> Iterator[RunningServer]:
    """A server reading `cameras`; `limits`: this module's frame-age and backoff, else the defaults."""
    tuned = {"max_frame_age_s": FRAME_AGE_S, "backoff_max_s": BACKOFF_MAX_S} if limits else {}
    config = workdir / "faults.yaml"
    config.write_text(
        yaml.safe_dump(
            {"cameras": [{"name": name, "source": cam.uri, **tuned} for name, cam in cameras.items()]}
        )
    )
    server = launch(["--model", str(fashion_cnn.onnx_path()), "--config", str(config)])
    try:
        yield server
    finally:
        server.stop()


def _until(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `condition` held (polled every 20 ms), None if it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return round(time.monotonic() - start, 3)
        time.sleep(0.02)
    return None


def _fault(
    stub: v1_grpc.CameraServiceStub, name: str, begin: Callable[[], None], end: Callable[[], None]
) -> dict[str, Any]:
    def status() -> v1.CameraStatus:
        return next(c for c in stub.ListCameras(v1.ListCamerasRequest(), timeout=5).cameras if c.name == name)

    assert _until(lambda: status().up, 30) is not None, f"camera {name} never came up"
    started = time.monotonic()
    begin()
    detected = _until(lambda: not status().up, FRAME_AGE_S + 10)
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
    frames = status().frames_inferred
    end()
    recovered = _until(lambda: (s := status()).up and s.frames_inferred > frames, 30)
    return {"detected_s": detected, "recovered_s": recovered}


def _shutdown_seconds(server: RunningServer) -> tuple[float, int]:
    started = time.monotonic()
    code = server.stop(timeout=60)
    return round(time.monotonic() - started, 2), code


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(getattr(args, "workdir", None) or ".cache/bench/reliability")
    workdir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "frame_age_limit_s": FRAME_AGE_S,
        "backoff_max_s": BACKOFF_MAX_S,
        "outage_s": OUTAGE_S,
    }
    door = MjpegCamera()
    door.start()
    try:
        with (
            _server({"door": door}, workdir) as server,
            grpc.insecure_channel(server.grpc_address) as channel,
        ):
            stub = v1_grpc.CameraServiceStub(channel)
            figures["unplugged"] = _fault(stub, "door", door.stop, door.start)
            figures["silent"] = _fault(stub, "door", door.sending.clear, door.sending.set)
            figures["shutdown_one_live_camera_s"], figures["exit_code_one_camera"] = _shutdown_seconds(server)
    finally:
        door.stop()
    silent = {f"cam{i}": MjpegCamera() for i in range(3)}
    for cam in silent.values():
        cam.start()
    try:
        # Default limits, as a fleet runs: a silent camera's read blocks up to max_frame_age_s (5 s).
        with (
            _server(silent, workdir, limits=False) as server,
            grpc.insecure_channel(server.grpc_address) as channel,
        ):
            stub = v1_grpc.CameraServiceStub(channel)
            _until(
                lambda: all(c.up for c in stub.ListCameras(v1.ListCamerasRequest(), timeout=5).cameras), 30
            )
            for cam in silent.values():
                cam.sending.clear()
            time.sleep(0.5)  # every capture thread is now blocked in a read that will not return soon
            figures["shutdown_three_silent_cameras_s"], figures["exit_code_silent"] = _shutdown_seconds(
                server
            )
    finally:
        for cam in silent.values():
            cam.stop()

    figures["targets"] = [
        target(
            "silent camera marked down after",
            figures["silent"]["detected_s"],
            "<=",
            FRAME_AGE_S + 1,
            "s",
        ),
        target(
            "unplugged camera marked down after",
            figures["unplugged"]["detected_s"],
            "<=",
            FRAME_AGE_S + 1,
            "s",
        ),
        target(
            "frames again after the camera is plugged back",
            figures["unplugged"]["recovered_s"],
            "<=",
            2.0,
            "s",
        ),
        target(
            "frames again after the camera speaks again",
            figures["silent"]["recovered_s"],
            "<=",
            2.0,
            "s",
        ),
        target("SIGTERM to exit, one live camera", figures["shutdown_one_live_camera_s"], "<=", 5.0, "s"),
        target(
            "SIGTERM to exit, three silent cameras",
            figures["shutdown_three_silent_cameras_s"],
            "<=",
            5.0,
            "s",
        ),
        target(
            "exit code after SIGTERM",
            max(abs(figures["exit_code_one_camera"]), abs(figures["exit_code_silent"])),
            "==",
            0,
            "code",
        ),
    ]
    return figures
