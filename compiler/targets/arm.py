"""64-bit ARM camera SoCs (Cortex-A53/A55/A72/A76...), cross-compiled with Debian's aarch64 GCC.

The manifest lists the ISA extensions (NEON, dot product, ...) the chosen core lets LLVM use, in
/proc/cpuinfo's names, so a camera with an older core refuses the artifact instead of faulting.

Verified under qemu: on an x86 workstation with qemu-user and the aarch64 cross g++ installed
(apt-get install qemu-user-static g++-aarch64-linux-gnu), `compile_model` runs the library under
qemu-aarch64, emulating the chosen core where qemu models it, with the aarch64 TVM runtime
(arm_emulation.py), and checks it against ONNX Runtime as a native build is checked. Without them
the artifact is written unverified.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from edgecam.compiler.artifact import TargetInfo
from edgecam.compiler.errors import BuildError, UnknownTargetError
from edgecam.compiler.targets.base import LibraryRunner, Target, TargetOptions, plain, register_target

if TYPE_CHECKING:
    from edgecam.compiler.lowering.packed_gemm import Dot

log = logging.getLogger(__name__)

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

    @field_validator("mattr")
    @classmethod
    def _known_features(cls, mattr: list[str]) -> list[str]:
        """Only features the manifest can name (LLVM_TO_CPUINFO): LLVM ignores a misspelt one with a
        warning, and code using one the manifest does not list would pass the camera's load check
        and then die of SIGILL."""
        for attr in mattr:
            if attr[:1] not in "+-" or attr[1:] not in LLVM_TO_CPUINFO:
                raise ValueError(
                    f"unknown aarch64 feature {attr!r}; valid: "
                    f"{', '.join(f'+{name}' for name in sorted(LLVM_TO_CPUINFO))} (or - to remove one)"
                )
        return mattr


@register_target
class Aarch64Target(Target):
    name = "aarch64"
    options_class = ArmOptions
    integer_qdq = True
    channels_last = True
    # int8 layers as packed GEMMs of the core's dot steps (arm_dots.py), as on x86.
    integer_channels_last = True
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

    def int8_dots(self, target: Any) -> tuple[Dot, ...]:
        """usdot with i8mm, sdot with dot product (ARMv8.2), else smull + sadalp (any NEON core)."""
        from edgecam.compiler.targets import arm_dots

        return arm_dots.target_dots(target)

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

    def library_runner(self) -> LibraryRunner | None:
        """Natively on an aarch64 host; elsewhere under qemu-user when it is installed."""
        native = super().library_runner()
        if native is not None:
            return native
        from edgecam.compiler.targets import arm_emulation

        missing = arm_emulation.missing_tools()
        if missing:
            log.warning(
                "to verify aarch64 code under qemu on this host, install %s (missing: %s)",
                arm_emulation.APT_PACKAGES,
                ", ".join(missing),
            )
            return None
        cpu = arm_emulation.qemu_cpu(self.options.mcpu, self.options.mattr)
        return LibraryRunner(
            f"qemu-aarch64 -cpu {cpu}", functools.partial(arm_emulation.run_library, cpu=cpu)
        )

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
