"""One compiled artifact and one real server process, shared by the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecam.models import fashion_cnn
from edgecam.server.launcher import RunningServer, launch

VIDEO_FRAMES = 60


@pytest.fixture(scope="session")
def bundled_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model compiled for this host by the real `edgecam compile` command."""
    out = tmp_path_factory.mktemp("artifact") / "fashion_cnn"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecam",
            "compile",
            str(fashion_cnn.onnx_path()),
            "--target",
            "x86_64",
            "--out",
            str(out),
        ],
        check=True,
    )
    return out


@pytest.fixture(scope="session")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """An MJPG .avi of sample images (224×224, as a camera would record them) and their labels."""
    import cv2

    images, labels = fashion_cnn.load_samples()
    path = tmp_path_factory.mktemp("video") / "fashion.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (224, 224))
    for image in images[:VIDEO_FRAMES]:
        big = cv2.resize(image, (224, 224), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path, labels[:VIDEO_FRAMES]


@pytest.fixture(scope="session")
def server(bundled_artifact: Path, video_file: tuple[Path, np.ndarray]) -> Iterator[RunningServer]:
    """A real `edgecam serve` process: a synthetic camera, a video-file camera, and a camera that is gone."""
    # Through a YAML config file, as a fleet deploys it; flags can only add plain cameras.
    config = video_file[0].parent / "edgecam.yaml"
    config.write_text(
        f"models: [{{path: '{bundled_artifact}'}}]\n"
        "cameras:\n"
        "  - {name: synth, source: 'synthetic:fps=100', shadow: {fraction: 0.5}}\n"
        f"  - {{name: video, source: '{video_file[0]}'}}\n"
        # Nothing listens on port 9: the server must start anyway and keep retrying.
        "  - {name: lost, source: 'http://127.0.0.1:9/stream.mjpg'}\n"
    )
    running = launch(["--config", str(config)])
    yield running
    code = running.stop()
    assert code == 0, "server did not exit cleanly on SIGTERM:\n" + "\n".join(running.log)
