"""NVIDIA GPUs through TVM's CUDA backend: its default pipeline fuses, then applies DLight's
default GPU schedules with one rule of edgecam's first (compiler/targets/cuda_schedules.py); no
tuning yet. Option `cuda_graph` replays a call's kernel launches as one CUDA graph.

Builds need nvcc but no GPU. The library carries the kernels as a cubin for `arch`, compiled by nvcc
at build time (compiler/targets/cuda_cubin.py), and no CUDA source: loading it needs only the CUDA
driver and TVM's CUDA runtime, never NVRTC. (Stock TVM 0.27 would embed the source and compile it
through NVRTC at every load.) The manifest says so (`device_code: "cubin sm_87"`), and a camera
refuses a GPU whose compute capability cannot run that cubin. A host without a GPU refuses the
artifact at load (check "device"). The compiler does not verify it against ONNX Runtime (its check
runs on the CPU), so the manifest says `verification: null`; bench/bench_cuda.py checks it on a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from edgecam.compiler.artifact import TargetInfo
from edgecam.compiler.errors import UnknownTargetError
from edgecam.compiler.targets import cuda_cubin
from edgecam.compiler.targets.base import Target, TargetOptions, plain, register_target
from edgecam.compiler.targets.x86 import TRIPLE

# Compute capabilities of GPUs found in cameras and edge boxes (Jetson) and of datacentre cards.
KNOWN_ARCHS = ("sm_53", "sm_62", "sm_72", "sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90")


class CudaOptions(TargetOptions):
    arch: str = Field(
        default="sm_87", description="compute capability, e.g. sm_87 (Jetson Orin), sm_90 (H100)"
    )
    # Off by default: on an H100, MobileNetV2's 54 launches cost the VM < 0.1 ms and the graph made a
    # call no faster (bench/README.md); a GPU with a slower host CPU (Jetson) may differ.
    cuda_graph: bool = Field(
        default=False,
        description="replay the model's kernel launches as one recorded CUDA graph (static shapes only)",
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

    def default_pipeline(self, target: Any) -> Any:
        from edgecam.compiler.targets import cuda_schedules

        return cuda_schedules.default_pipeline(target)

    def pipeline(self, target: Any) -> Any:
        if self.database is None:
            return self.default_pipeline(target)
        from tvm.s_tir import dlight as dl

        from edgecam.compiler.targets import cuda_schedules
        from edgecam.compiler.tuning import replay_pipeline

        # Kernels the database has no record of still need threads: the default rules give them.
        rest = [dl.ApplyDefaultSchedule(*cuda_schedules.schedule_rules())]
        return replay_pipeline(target, self.database, prepack=False, schedule_rest=rest)

    def build(self, mod: Any) -> Any:
        # The fallback module keeps the kernels as source even where the CUDA driver is present (it
        # would otherwise compile them through NVRTC right here); `export` replaces that source.
        import tvm

        # With a CUDA graph the first call records the kernel launches and later calls replay them
        # in one; TVM's pipeline (RewriteCUDAGraph) rewrites for it when this config is set.
        config = {"relax.backend.use_cuda_graph": self.options.cuda_graph}
        with _environment("TVM_COMPILE_FORCE_FALLBACK", "1"), tvm.transform.PassContext(config=config):
            return super().build(mod)

    def export(self, executable: Any, directory: Path) -> str:
        name = "model.so"
        target = self.tvm_target()
        executable.export_library(str(directory / name), fpack_imports=cuda_cubin.cubin_packer(target))
        cuda_cubin.check_library(directory / name, self.options.arch)
        return name

    def runs_here(self) -> bool:
        # Verification runs libraries on the CPU (compiler/verify.py), so not even a GPU host can verify
        # one here; bench/bench_cuda.py checks CUDA artifacts against ONNX Runtime on a GPU.
        return False

    def info(self) -> TargetInfo:
        target = self.tvm_target()
        return TargetInfo(
            name=f"cuda-{self.options.arch.replace('_', '')}",
            tvm={**plain(target.export()), "host": plain(target.host.export())},
            arch="x86_64",
            device="cuda",
            device_code=f"cubin {self.options.arch}",
        )


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """Set an environment variable TVM's C++ reads (getenv) for the duration of a build."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous
