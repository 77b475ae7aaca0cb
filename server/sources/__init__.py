"""Frame sources: every module in this package registers one kind (@register_source); `discover()`
imports them all, so a new source is one new file here. The CLI's short form and the YAML mapping
form are both read here, from what the registered configs declare."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from edgecam.server.sources.base import (
    Frame,
    FrameSource,
    SourceConfig,
    SourceError,
    create_source,
    register_source,
    registered_configs,
    registered_kinds,
)

__all__ = [
    "Frame",
    "FrameSource",
    "SourceConfig",
    "SourceError",
    "create_source",
    "discover",
    "parse_source",
    "register_source",
    "registered_kinds",
    "source_config",
]

_SKIP = {"base"}


def discover() -> None:
    """Import every source module so its @register_source runs (a new source needs no edit here)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SKIP and not info.name.startswith("_") and not info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")


def forms() -> str:
    """Every form a camera source string may take, for error messages."""
    discover()
    configs = registered_configs()
    prefixed = [f"{kind}[:{','.join(f'{k}=...' for k in _options_of(cls))}]" for kind, cls in configs.items()]
    bare = [cls.bare_forms for cls in configs.values() if cls.bare_forms]
    return "; ".join(prefixed + bare)


def parse_source(spec: str) -> SourceConfig:
    """A camera source string (the CLI's `NAME=SOURCE`, or a YAML `source:` string): `KIND` or
    `KIND:KEY=VALUE,...` for any registered kind (`synthetic:fps=10,seed=3`), or a string one kind
    recognises by its form (`rtsp://cam/1`, `/dev/video0`, a video file: SourceConfig.from_bare)."""
    spec = spec.strip()
    if not spec:
        raise SourceError(f"empty camera source; valid forms: {forms()}")
    discover()
    configs = registered_configs()
    kind, _, text = spec.partition(":")
    if kind in configs and not text.startswith("//"):
        return _config(configs[kind], spec, _options(text))
    for cls in sorted(configs.values(), key=lambda c: c.bare_fallback):  # fallbacks last, stable by kind
        config = cls.from_bare(spec)
        if config is not None:
            return config
    raise SourceError(
        f"camera source {spec!r}: no such file, and no source kind reads it; valid forms: {forms()}"
    )


def source_config(value: str | Mapping[str, Any] | SourceConfig) -> SourceConfig:
    """A camera's `source` setting as its kind's config: a string (parse_source), or a mapping with
    `kind` and that kind's typed options (YAML: `source: {kind: synthetic, fps: 10}`)."""
    if isinstance(value, SourceConfig):
        return value
    if isinstance(value, str):
        return parse_source(value)
    discover()
    configs = registered_configs()
    kind = value.get("kind")
    if kind not in configs:
        raise SourceError(f"source {dict(value)!r}: `kind` must be one of {sorted(configs)}, got {kind!r}")
    options = {k: v for k, v in value.items() if k != "kind"}
    return _config(configs[str(kind)], f"{kind} {options}", options)


def _options(text: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SourceError(f"source option {item!r} is not KEY=VALUE; valid forms: {forms()}")
        options[key.strip()] = value.strip()
    return options


def _options_of(cls: type[SourceConfig]) -> list[str]:
    return [name for name in cls.model_fields if name != "kind"]


def _config(cls: type[SourceConfig], where: str, options: Mapping[str, Any]) -> SourceConfig:
    unknown = sorted(set(options) - set(_options_of(cls)))
    if unknown or "kind" in options:
        raise SourceError(
            f"source {where!r}: unknown option(s) {unknown or ['kind']}; valid: {sorted(_options_of(cls))}"
        )
    try:
        return cls.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SourceError(f"source {where!r}: {problems}") from None
