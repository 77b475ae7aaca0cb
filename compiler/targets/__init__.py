"""Compilation targets. Importing this package registers every built-in target module."""

from __future__ import annotations

import platform

from edgecam.compiler.targets import arm, cuda, x86
from edgecam.compiler.targets.base import Target, create_target, register_target, target_names

__all__ = [
    "Target",
    "arm",
    "create_target",
    "cuda",
    "host_target_name",
    "register_target",
    "target_names",
    "x86",
]

_HOST_TARGETS = {"x86_64": "x86_64", "aarch64": "aarch64"}


def host_target_name() -> str:
    """The target that builds for this machine (what `edgecam demo` compiles for)."""
    machine = platform.machine()
    if machine not in _HOST_TARGETS:
        raise RuntimeError(f"no edgecam target builds for this {machine} host yet; targets: {target_names()}")
    return _HOST_TARGETS[machine]
