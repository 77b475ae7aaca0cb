"""64-bit ARM camera SoCs (Cortex-A53/A55/A72/A76...), cross-compiled with Debian's aarch64 GCC.

The manifest lists the ISA extensions (NEON, dot product, ...) the chosen core lets LLVM use, in
/proc/cpuinfo's names, so a camera with an older core refuses the artifact instead of faulting.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from edgecam.compiler.artifact import TargetInfo
from edgecam.compiler.errors import BuildError, UnknownTargetError
from edgecam.compiler.targets.base import Target, TargetOptions, plain, register_target

TRIPLE = "aarch64-linux-gnu"
CROSS_CC = "aarch64-linux-gnu-gcc"  # Debian: apt-get install gcc-aarch64-linux-gnu

# Cores found in cameras; dot product (sdot/udot) arrived with ARMv8.2 (A55, A76).
PRESETS = ("cortex-a53", "cortex-a55", "cortex-a72", "cortex-a73", "cortex-a76", "cortex-a78", "neoverse-n1")

# LLVM feature → /proc/cpuinfo "Features" name, for extensions whose absence means SIGILL.
LLVM_TO_CPUINFO = {
    "neon": "asimd",
    "fp-armv8": "fp",
    "fullfp16": "asimdhp",
    "dotprod": "asimddp",
    "rdm": "asimdrdm",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "crc": "crc32",
    "lse": "atomics",
    "aes": "aes",
    "sha2": "sha2",
    "rcpc": "lrcpc",
}


class ArmOptions(TargetOptions):
    mcpu: str = Field(default="cortex-a53", description=f"core to compile for, e.g. {', '.join(PRESETS)}")
    mattr: list[str] = Field(default_factory=list, description="LLVM features to add/remove, e.g. +dotprod")
    num_cores: int = Field(default=4, ge=1)
    cc: str = Field(default=CROSS_CC, description="cross compiler that links the shared library")


@register_target
class Aarch64Target(Target):
    name = "aarch64"
    options_class = ArmOptions
    options: ArmOptions

    def tvm_target(self) -> Any:
        import tvm
        from tvm.target import codegen

        if not codegen.llvm_is_valid_cpu(self.options.mcpu, TRIPLE):
            raise UnknownTargetError(
                f"LLVM does not know the ARM core {self.options.mcpu!r}; camera cores: {', '.join(PRESETS)}"
            )
        spec: dict[str, Any] = {
            "kind": "llvm",
            "mtriple": TRIPLE,
            "mcpu": self.options.mcpu,
            "num-cores": self.options.num_cores,
        }
        if self.options.mattr:
            spec["mattr"] = list(self.options.mattr)
        return tvm.target.Target(spec)

    def export(self, executable: Any, directory: Path) -> str:
        from tvm.support import cc

        if shutil.which(self.options.cc) is None:
            raise BuildError(
                f"cross compiler {self.options.cc!r} not found; "
                "on Debian: apt-get install gcc-aarch64-linux-gnu"
            )
        name = "model.so"
        executable.export_library(str(directory / name), fcompile=cc.cross_compiler(self.options.cc))
        return name

    def info(self) -> TargetInfo:
        from tvm.target import codegen

        target = self.tvm_target()
        features = {LLVM_TO_CPUINFO[f] for f in codegen.llvm_get_cpu_features(target) if f in LLVM_TO_CPUINFO}
        return TargetInfo(
            name=self.name,
            tvm=plain(target.export()),
            arch="aarch64",
            device="cpu",
            cpu_features=sorted(features),
        )
