"""Frame sources, and the CLI's short form for them. Importing this package registers every kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgecam.server.sources.base import (
    Frame,
    FrameSource,
    SourceConfig,
    SourceError,
    create_source,
    register_source,
    registered_kinds,
)
from edgecam.server.sources.opencv import OpenCVSource, OpenCVSourceConfig, source_type
from edgecam.server.sources.synthetic import SyntheticSource, SyntheticSourceConfig

__all__ = [
    "Frame",
    "FrameSource",
    "OpenCVSource",
    "OpenCVSourceConfig",
    "SourceConfig",
    "SourceError",
    "SyntheticSource",
    "SyntheticSourceConfig",
    "create_source",
    "parse_source",
    "register_source",
    "registered_kinds",
]

_FORMS = (
    "synthetic[:fps=N,seed=N,size=N,samples=PATH], rtsp://..., http(s)://..., /dev/videoN, "
    "a device index N, or a video file path"
)


def parse_source(spec: str) -> SourceConfig:
    """The SOURCE part of the CLI's `NAME=SOURCE`, e.g. `synthetic:fps=10,seed=3` or `rtsp://cam/1`."""
    spec = spec.strip()
    if not spec:
        raise SourceError(f"empty camera source; valid forms: {_FORMS}")
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _config(SyntheticSourceConfig, spec, _options(spec.partition(":")[2]))
    kind = source_type(spec)
    if kind == "file" and not Path(spec).is_file():
        raise SourceError(f"camera source {spec!r}: no such file; valid forms: {_FORMS}")
    return OpenCVSourceConfig(uri=spec)


def _options(text: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SourceError(f"source option {item!r} is not KEY=VALUE; valid forms: {_FORMS}")
        options[key.strip()] = value.strip()
    return options


def _config(cls: type[SourceConfig], spec: str, options: dict[str, Any]) -> SourceConfig:
    unknown = sorted(set(options) - set(cls.model_fields) - {"kind"})
    if unknown or "kind" in options:
        valid = sorted(set(cls.model_fields) - {"kind"})
        raise SourceError(f"source {spec!r}: unknown option(s) {unknown or ['kind']}; valid: {valid}")
    try:
        return cls.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SourceError(f"source {spec!r}: {problems}") from None
