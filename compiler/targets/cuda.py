"""NVIDIA GPUs through TVM's CUDA backend: its default pipeline fuses, then applies DLight's
default GPU schedules (no tuning yet).

Builds need no GPU: the library embeds the CUDA kernels as source and TVM's runtime compiles them
when it loads them (NVRTC). That is a fact of TVM 0.27 (a build with nvcc registered still embeds
source), so a camera needs NVRTC until edgecam ships compiled cubins. A host without a GPU
refuses the artifact at load (check "device"), and the compiler cannot verify it against ONNX
Runtime here: the manifest then says `verification: null`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgecam.compiler.artifact import TargetInfo
from edgecam.compiler.errors import UnknownTargetError
from edgecam.compiler.targets.base import Target, TargetOptions, plain, register_target
from edgecam.compiler.targets.x86 import TRIPLE

# Compute capabilities of GPUs found in cameras and edge boxes (Jetson) and of datacentre cards.
KNOWN_ARCHS = ("sm_53", "sm_62", "sm_72", "sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90")


class CudaOptions(TargetOptions):
    arch: str = Field(
        default="sm_87", description="compute capability, e.g. sm_87 (Jetson Orin), sm_90 (H100)"
    )


@register_target
class CudaTarget(Target):
    name = "cuda"
    options_class = CudaOptions
    options: CudaOptions

    def tvm_target(self) -> Any:
        import tvm

        if self.options.arch not in KNOWN_ARCHS:
            raise UnknownTargetError(
                f"unknown CUDA arch {self.options.arch!r}; known: {', '.join(KNOWN_ARCHS)}"
            )
        # Host code stays generic x86-64: the GPU box's CPU is not the build machine's.
        return tvm.target.Target(
            {"kind": "cuda", "arch": self.options.arch}, host={"kind": "llvm", "mtriple": TRIPLE}
        )

    def info(self) -> TargetInfo:
        target = self.tvm_target()
        return TargetInfo(
            name=f"cuda-{self.options.arch.replace('_', '')}",
            tvm={**plain(target.export()), "host": plain(target.host.export())},
            arch="x86_64",
            device="cuda",
        )
