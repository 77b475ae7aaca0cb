"""A frame source is one file: a module that declares its config and registers its class is seen by
the CLI's short form, the YAML mapping form, the error messages and the pipeline's factory, with no
edit anywhere else."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edgecam.server.cli import _camera_config
from edgecam.server.settings import ServerSettings
from edgecam.server.sources import SourceError, create_source, forms, parse_source, registered_kinds
from edgecam.server.sources.base import _REGISTRY

# The whole plug-in, as a user would write it in server/sources/toy.py.
TOY_SOURCE = """
import time
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from edgecam.server.sources.base import Frame, FrameSource, SourceConfig, register_source


class ToyConfig(SourceConfig):
    kind: Literal["toy"] = "toy"
    level: int = Field(default=0, ge=0, le=255)
    size: int = Field(default=8, gt=0)
    bare_forms: ClassVar[str] = "toy://LEVEL"

    @classmethod
    def from_bare(cls, spec):
        return cls(level=int(spec.removeprefix("toy://"))) if spec.startswith("toy://") else None


@register_source(ToyConfig)
class ToySource(FrameSource):
    def __init__(self, config):
        self.config = config

    def open(self):
        pass

    def read(self):
        image = np.full((self.config.size, self.config.size, 3), self.config.level, np.uint8)
        return Frame(image=image, captured_at=time.time())

    def close(self):
        pass
"""


@pytest.fixture
def toy(tmp_path: Path) -> Iterator[type]:
    """The toy source module imported (registering itself), and unregistered afterwards."""
    path = tmp_path / "toy_source.py"
    path.write_text(TOY_SOURCE)
    spec = importlib.util.spec_from_file_location("toy_source", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_source"] = module
    spec.loader.exec_module(module)
    try:
        yield module.ToyConfig
    finally:
        _REGISTRY.pop("toy", None)
        sys.modules.pop("toy_source", None)


def test_a_registered_toy_source_is_seen_by_the_cli_and_the_config(toy: type, tmp_path: Path) -> None:
    assert "toy" in registered_kinds()
    assert "toy[:level=...,size=...]" in forms() and "toy://LEVEL" in forms()
    # The CLI's --camera NAME=SOURCE, prefixed and bare forms.
    assert parse_source("toy:level=9,size=4") == toy(level=9, size=4)
    assert _camera_config("front=toy://200").source_config() == toy(level=200)
    # A YAML mapping with typed options, validated by the toy's own model.
    config = tmp_path / "edgecam.yaml"
    config.write_text("cameras:\n  - name: yard\n    source: {kind: toy, level: 30, size: 2}\n")
    (camera,) = ServerSettings.load(config).cameras
    assert camera.source == toy(level=30, size=2)
    config.write_text("cameras:\n  - name: yard\n    source: {kind: toy, level: 300}\n")
    with pytest.raises(ValidationError, match=r"(?s)cameras\.0\.source.*level"):
        ServerSettings.load(config)
    # The pipeline's factory builds it from its config.
    source = create_source(camera.source_config())
    source.open()
    frame = source.read()
    assert frame is not None and frame.image.shape == (2, 2, 3) and np.all(frame.image == 30)


def test_without_the_module_the_kind_is_unknown_and_named() -> None:
    assert "toy" not in registered_kinds()
    with pytest.raises(SourceError, match=r"no such file, and no source kind reads it"):
        parse_source("toy:level=3")
    # Its bare form is then just another URL, which OpenCV (FFmpeg) is asked to open.
    assert parse_source("toy://3").kind == "opencv"
