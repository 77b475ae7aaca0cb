"""Frame sources against real files and real OpenCV: synthetic frames, video files, missing devices."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecam.server.sources import SourceError, create_source, parse_source, registered_kinds
from edgecam.server.sources.opencv import OpenCVSource, OpenCVSourceConfig
from edgecam.server.sources.synthetic import SyntheticSourceConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_both_kinds_are_registered() -> None:
    assert {"synthetic", "opencv"} <= set(registered_kinds())


def test_synthetic_frames_decode_back_to_their_samples(
    samples_npz: Path, samples: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = samples
    source = create_source(SyntheticSourceConfig(fps=0, seed=3, size=224, samples=samples_npz))
    source.open()
    frames = [source.read() for _ in range(25)]
    source.close()
    labels = []
    for frame in frames:
        assert frame is not None and frame.label is not None
        assert frame.image.shape == (224, 224, 3) and frame.image.dtype == np.uint8
        gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
        small = cv2.resize(gray, (28, 28), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(small, images[frame.label])
        labels.append(frame.label)
    # A seeded shuffle: every sample once per cycle, the same order each cycle, not the file's order.
    assert sorted(labels[:10]) == list(range(10))
    assert labels[:10] == labels[10:20]
    assert labels[:10] != list(range(10))


def test_synthetic_seed_sets_the_order(samples_npz: Path) -> None:
    def order(seed: int) -> list[int | None]:
        source = create_source(SyntheticSourceConfig(fps=0, seed=seed, size=28, samples=samples_npz))
        source.open()
        return [f.label for f in (source.read() for _ in range(10)) if f is not None]

    assert order(1) == order(1)
    assert order(1) != order(2)


def test_synthetic_source_is_paced_at_fps(samples_npz: Path) -> None:
    source = create_source(SyntheticSourceConfig(fps=50, samples=samples_npz))
    source.open()
    start = time.monotonic()
    for _ in range(11):
        assert source.read() is not None
    elapsed = time.monotonic() - start
    assert 0.18 <= elapsed < 0.5, f"11 frames at 50 fps took {elapsed:.3f} s"


def test_synthetic_missing_samples_file(tmp_path: Path) -> None:
    source = create_source(SyntheticSourceConfig(samples=tmp_path / "nope.npz"))
    with pytest.raises(SourceError, match="does not exist"):
        source.open()


def _write_video(path: Path, levels: list[int], fps: float = 100.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for level in levels:
        writer.write(np.full((48, 64, 3), level, dtype=np.uint8))
    writer.release()
    return path


def test_video_file_is_read_and_loops(tmp_path: Path) -> None:
    levels = [20, 70, 120, 170, 220]
    video = _write_video(tmp_path / "clip.avi", levels)
    source = OpenCVSource(OpenCVSourceConfig(uri=str(video), realtime=False))
    source.open()
    frames = [source.read() for _ in range(12)]
    source.close()
    source.close()  # safe twice
    assert all(f is not None for f in frames)
    seen = [round(float(f.image.mean())) for f in frames if f is not None]
    expected = [levels[i % len(levels)] for i in range(12)]
    assert np.allclose(seen, expected, atol=4), seen
    assert frames[0] is not None and frames[0].image.shape == (48, 64, 3)


def test_video_file_without_loop_ends(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", [50, 150])
    source = OpenCVSource(OpenCVSourceConfig(uri=str(video), loop=False, realtime=False))
    source.open()
    assert source.read() is not None and source.read() is not None
    assert source.read() is None


def test_video_file_is_paced_at_its_native_fps(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", [10, 60, 110, 160, 210, 250], fps=20.0)
    source = OpenCVSource(OpenCVSourceConfig(uri=str(video)))
    source.open()
    start = time.monotonic()
    for _ in range(6):
        assert source.read() is not None
    assert 0.2 <= time.monotonic() - start < 0.6


def test_missing_device_says_what_to_check() -> None:
    source = OpenCVSource(OpenCVSourceConfig(uri="/dev/video97"))
    with pytest.raises(SourceError, match=r"/dev/video97 does not exist.*plugged in"):
        source.open()
    with pytest.raises(SourceError, match=r"/dev/video97 does not exist"):
        OpenCVSource(OpenCVSourceConfig(uri="97")).open()


def test_undecodable_file_names_the_codec_problem(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match=r"cannot decode video file .*junk\.mp4"):
        OpenCVSource(OpenCVSourceConfig(uri=str(junk))).open()


def test_unreachable_stream_fails_fast_with_a_hint() -> None:
    uri = f"http://user:secret@127.0.0.1:{_free_port()}/stream.mjpg"
    source = OpenCVSource(OpenCVSourceConfig(uri=uri, open_timeout_s=2))
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"cannot open stream .*reachable") as info:
        source.open()
    assert time.monotonic() - start < 5
    assert "secret" not in str(info.value) and "secret" not in source.describe()


def test_parse_source_forms(tmp_path: Path) -> None:
    assert parse_source("synthetic") == SyntheticSourceConfig()
    assert parse_source("synthetic:fps=10, seed=3") == SyntheticSourceConfig(fps=10, seed=3)
    assert parse_source("rtsp://cam.local:554/stream1") == OpenCVSourceConfig(
        uri="rtsp://cam.local:554/stream1"
    )
    assert parse_source("http://cam/video.mjpg") == OpenCVSourceConfig(uri="http://cam/video.mjpg")
    assert parse_source("/dev/video0") == OpenCVSourceConfig(uri="/dev/video0")
    assert parse_source("0") == OpenCVSourceConfig(uri="0")
    video = _write_video(tmp_path / "clip.avi", [1])
    assert parse_source(str(video)) == OpenCVSourceConfig(uri=str(video))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/clip.mp4", "no such file"),
        ("synthetic:fps=fast", "fps"),
        ("synthetic:colour=red", r"unknown option.*colour.*valid"),
        ("synthetic:fps", "not KEY=VALUE"),
        ("", "empty"),
    ],
)
def test_parse_source_errors_are_clear(spec: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_source(spec)


def _write_raw_mjpeg(path: Path, levels: list[int]) -> Path:
    """A raw MJPEG stream, JPEGs back to back, as IP cameras record it: no container, no index to seek."""
    with path.open("wb") as out:
        for level in levels:
            ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), level, dtype=np.uint8))
            assert ok
            out.write(jpeg.tobytes())
    return path


def test_raw_mjpeg_file_loops_by_reopening(tmp_path: Path) -> None:
    levels = [20, 70, 120, 170, 220]
    source = OpenCVSource(
        OpenCVSourceConfig(uri=str(_write_raw_mjpeg(tmp_path / "door.mjpeg", levels)), realtime=False)
    )
    source.open()
    frames = [source.read() for _ in range(17)]
    source.close()
    assert all(f is not None for f in frames)
    seen = [round(float(f.image.mean())) for f in frames if f is not None]
    assert np.allclose(seen, [levels[i % len(levels)] for i in range(17)], atol=4), seen


def test_a_looping_raw_mjpeg_camera_counts_no_failure(tmp_path: Path, make_onnx: Callable[..., Path]) -> None:
    from edgecam.server.app import EdgecamServer
    from edgecam.server.settings import CameraConfig, ModelConfig, ServerSettings

    video = _write_raw_mjpeg(tmp_path / "door.mjpeg", [20, 70, 120, 170, 220])  # 25 fps: 0.2 s a loop
    server = EdgecamServer(
        ServerSettings(
            grpc_port=0, metrics_port=0, models=[ModelConfig(path=make_onnx())],
            cameras=[CameraConfig(name="door", source=str(video))],
        )
    )  # fmt: skip
    server.start()
    try:
        time.sleep(1.5)
        status = server.service.camera("door").status()
    finally:
        server.stop()
    errors = [
        s for metric in server.registry.collect() if metric.name == "edgecam_camera_errors"
        for s in metric.samples if s.name.endswith("_total") and s.value > 0
    ]  # fmt: skip
    assert errors == []
    assert status.up and status.frames_inferred >= 20  # about 7 loops of 5 frames at 25 fps
