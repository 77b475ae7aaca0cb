"""A camera without a camera: Fashion-MNIST samples upscaled to camera-like frames, with labels.

It makes the whole serving path (and online accuracy) testable on any machine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgecam.server.sources.base import Frame, FrameSource, SourceConfig, SourceError, register_source


class SyntheticSourceConfig(SourceConfig):
    kind: Literal["synthetic"] = "synthetic"
    fps: float = Field(default=30.0, ge=0)  # 0: as fast as the consumer reads
    seed: int = 0
    size: int = Field(default=224, gt=0)  # square frame side in pixels
    # An .npz with `images` uint8 [N,H,W] and `labels` int [N]; default: the bundled samples.
    samples: Path | None = None


def load_samples(path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Sample images and labels from `path`, or from the bundled Fashion-MNIST model package."""
    if path is None:
        try:
            from edgecam.models.fashion_cnn import load_samples as bundled
        except ImportError as exc:
            raise SourceError(
                "the bundled Fashion-MNIST samples are not available (edgecam.models.fashion_cnn); "
                "give the synthetic source samples=PATH.npz"
            ) from exc
        images, labels = bundled()
    else:
        if not Path(path).is_file():
            raise SourceError(f"synthetic samples file {path} does not exist")
        with np.load(path) as data:
            if "images" not in data or "labels" not in data:
                raise SourceError(
                    f"{path} must hold arrays 'images' and 'labels'; it has {sorted(data.files)}"
                )
            images, labels = data["images"], data["labels"]
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 3 or len(images) == 0 or len(images) != len(labels):
        raise SourceError(
            f"samples must be N images [N,H,W] with N labels; got {images.shape} and {labels.shape}"
        )
    return images, labels


@register_source(SyntheticSourceConfig)
class SyntheticSource(FrameSource):
    """Cycles through the samples in a seeded random order, one BGR frame every 1/fps seconds."""

    def __init__(self, config: SyntheticSourceConfig) -> None:
        self.config = config
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._order = np.zeros(0, dtype=np.int64)
        self._position = 0
        self._next_at = 0.0

    def open(self) -> None:
        self._images, self._labels = load_samples(self.config.samples)
        self._order = np.random.default_rng(self.config.seed).permutation(len(self._images))
        self._position = 0
        self._next_at = time.monotonic()

    def read(self) -> Frame | None:
        if self._images is None or self._labels is None:
            return None
        if self.config.fps > 0:
            delay = self._next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # Schedule from the previous deadline so the rate does not drift, but never build up a
            # burst of catch-up frames after a slow consumer.
            interval = 1.0 / self.config.fps
            self._next_at = max(self._next_at + interval, time.monotonic() - interval)
        index = int(self._order[self._position % len(self._order)])
        self._position += 1
        return Frame(
            image=to_camera_frame(self._images[index], self.config.size),
            captured_at=time.time(),
            label=int(self._labels[index]),
        )

    def close(self) -> None:
        self._images = self._labels = None

    def describe(self) -> str:
        return f"synthetic (fps={self.config.fps:g}, seed={self.config.seed}, size={self.config.size})"


def to_camera_frame(gray: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscale to size x size BGR: an INTER_AREA resize back recovers the sample."""
    import cv2  # lazy: importing the server must not load OpenCV

    big = cv2.resize(gray, (size, size), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
