"""Compression passes. Every module in this package registers itself; `discover()` imports them all."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from edgecam.compiler.passes.base import (
    CompressionPass,
    PassConfig,
    PassContext,
    PassResult,
    WeightCoding,
    register_pass,
    registered,
)

__all__ = [
    "CompressionPass",
    "PassConfig",
    "PassContext",
    "PassResult",
    "WeightCoding",
    "create_pass",
    "discover",
    "parse_pass_config",
    "pass_kinds",
    "register_pass",
]

_SKIP = {"base"}


def discover() -> None:
    """Import every pass module so its @register_pass runs (a new technique needs no edit here)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SKIP and not info.name.startswith("_") and not info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")


def pass_kinds() -> list[str]:
    discover()
    return sorted(registered())


def parse_pass_config(data: Any) -> PassConfig:
    """Validate one recipe entry into its pass's config; unknown kinds name the valid ones."""
    from edgecam.compiler.errors import RecipeError

    if isinstance(data, PassConfig):
        return data
    if not isinstance(data, dict) or "kind" not in data:
        raise RecipeError(f"a pass must be a mapping with a `kind` (one of {pass_kinds()}), got {data!r}")
    discover()
    cls = registered().get(str(data["kind"]))
    if cls is None:
        raise RecipeError(f"unknown pass kind {data['kind']!r}; valid kinds: {', '.join(pass_kinds())}")
    return cls.config_type.model_validate(data)


def create_pass(config: PassConfig) -> CompressionPass[Any]:
    discover()
    return registered()[config.kind](config)
