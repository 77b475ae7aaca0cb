"""The user-facing commands, run as a user would, against the shared server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgecam.compiler.targets.x86 import portable_options
from edgecam.models import fashion_cnn
from edgecam.server.launcher import RunningServer


def edgecam(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecam", *args], capture_output=True, text=True, timeout=timeout
    )


def test_watch_prints_live_predictions(server: RunningServer) -> None:
    result = edgecam("watch", server.grpc_address, "synth", "--count", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5
    assert all(line.startswith("synth #") and "truth=" in line for line in lines)


def test_infer_classifies_an_image_file(server: RunningServer, tmp_path: Path) -> None:
    import cv2

    images, labels = fashion_cnn.load_samples()
    index = next(i for i, label in enumerate(labels) if label == 1)  # a trouser: rarely confused
    path = tmp_path / "trouser.png"
    cv2.imwrite(str(path), cv2.resize(images[index], (112, 112), interpolation=cv2.INTER_NEAREST))
    result = edgecam("infer", server.grpc_address, "fashion_cnn", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("Trouser (1)")


def test_status_and_errors_name_the_problem(server: RunningServer) -> None:
    status = edgecam("status", server.grpc_address)
    assert status.returncode == 0, status.stderr
    assert "ready" in status.stdout and "lost" in status.stdout and "DOWN" in status.stdout
    missing = edgecam("watch", server.grpc_address, "garage", "--count", "1")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr and "garage" in missing.stderr


def test_demo_runs_and_exits_cleanly(tmp_path: Path) -> None:
    result = edgecam("demo", "--frames", "60", "--workdir", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "online top-1 accuracy" in result.stdout
    assert "server shut down cleanly" in result.stderr
    if portable_options():  # an AVX2 x86-64 host: the committed tuning database makes the demo fast
        assert "with the tuning database" in " ".join(result.stderr.split()), result.stderr
