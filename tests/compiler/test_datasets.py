"""Recipe data sets: which samples each config yields (video frames by start/every/limit, npz labels,
concatenation order), and a clear error for a set that yields nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter

from edgecam.compiler.datasets import DatasetConfig, labels_of, load_dataset
from edgecam.compiler.errors import RecipeError

CONFIG: TypeAdapter[DatasetConfig] = TypeAdapter(DatasetConfig)


def numbered_video(path: Path, frames: int) -> Path:
    """An MJPG video whose frame i is a flat gray image of value 10·i (JPEG keeps flat images ±1)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for index in range(frames):
        writer.write(np.full((24, 32, 3), 10 * index, np.uint8))
    writer.release()
    return path


def frame_numbers(samples: list) -> list[int]:
    return [round(float(sample.image.mean()) / 10) for sample in samples]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, list(range(20))),
        ({"every": 3}, [0, 3, 6, 9, 12, 15, 18]),
        ({"start": 10, "every": 2}, [10, 12, 14, 16, 18]),
        ({"start": 5, "every": 4, "limit": 2}, [5, 9]),
    ],
)
def test_video_frames_by_start_every_and_limit(options: dict, expected: list[int], tmp_path: Path) -> None:
    numbered_video(tmp_path / "v.avi", 20)
    config = CONFIG.validate_python({"kind": "video", "path": "v.avi", **options})
    samples = load_dataset(config, base_dir=tmp_path)  # relative paths resolve against the recipe's dir
    assert frame_numbers(samples) == expected
    assert labels_of(samples) is None


def test_two_sets_from_one_video_are_disjoint_by_start(tmp_path: Path) -> None:
    numbered_video(tmp_path / "v.avi", 20)
    evaluation = load_dataset(
        CONFIG.validate_python({"kind": "video", "path": "v.avi", "limit": 10}), tmp_path
    )
    calibration = load_dataset(
        CONFIG.validate_python({"kind": "video", "path": "v.avi", "start": 10}), tmp_path
    )
    assert not set(frame_numbers(evaluation)) & set(frame_numbers(calibration))


def test_a_start_past_the_end_is_an_error_naming_the_set(tmp_path: Path) -> None:
    numbered_video(tmp_path / "v.avi", 5)
    with pytest.raises(RecipeError, match="yielded no samples"):
        load_dataset(CONFIG.validate_python({"kind": "video", "path": "v.avi", "start": 50}), tmp_path)


def test_concat_keeps_order_and_npz_labels(tmp_path: Path) -> None:
    images = np.stack([np.full((8, 8), value, np.uint8) for value in (1, 2, 3)])
    np.savez(tmp_path / "s.npz", images=images, labels=np.array([7, 8, 9]))
    numbered_video(tmp_path / "v.avi", 3)
    config = CONFIG.validate_python(
        {"kind": "concat", "parts": [{"kind": "npz", "path": "s.npz"}, {"kind": "video", "path": "v.avi"}]}
    )
    samples = load_dataset(config, tmp_path)
    assert [int(s.image.mean()) for s in samples[:3]] == [1, 2, 3]
    assert frame_numbers(samples[3:]) == [0, 1, 2]
    assert [s.label for s in samples] == [7, 8, 9, None, None, None]


def test_negative_start_is_refused() -> None:
    with pytest.raises(ValueError, match="start"):
        CONFIG.validate_python({"kind": "video", "path": "v.avi", "start": -1})
