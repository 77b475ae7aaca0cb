"""Tiny ONNX models built in code for the compiler tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from convnets import build_convnet


@pytest.fixture
def convnet(tmp_path: Path) -> Path:
    return build_convnet(tmp_path / "convnet.onnx")


@pytest.fixture(scope="session")
def convnet_builder() -> Callable[..., Path]:
    """build_convnet itself, for fixtures with a wider scope than convnet."""
    return build_convnet


@pytest.fixture
def make_convnet(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "net.onnx", **kwargs: object) -> Path:
        return build_convnet(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make
