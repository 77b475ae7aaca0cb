"""x86_64 CPUs through LLVM. The manifest lists the ISA extensions the chosen `mcpu` lets LLVM use,
so a camera without them refuses the artifact instead of dying of SIGILL (seen: a znver4 build
on an AVX2-only host)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field

from edgecam.compiler.artifact import TargetInfo
from edgecam.compiler.errors import UnknownTargetError
from edgecam.compiler.targets.base import Target, TargetOptions, plain, register_target

TRIPLE = "x86_64-linux-gnu"

# LLVM feature name → /proc/cpuinfo flag, for the extensions whose absence means SIGILL.
LLVM_TO_CPUINFO = {
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512cd": "avx512cd",
    "avx512vnni": "avx512_vnni",
    "avxvnni": "avx_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "avx512vbmi": "avx512vbmi",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
}


def host_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


class X86Options(TargetOptions):
    mcpu: str | None = Field(default=None, description="LLVM CPU name; default: this build host's CPU")
    num_cores: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)


@register_target
class X86Target(Target):
    name = "x86_64"
    options_class = X86Options
    options: X86Options

    def tvm_target(self) -> Any:
        import tvm
        from tvm.target import codegen

        mcpu = self.options.mcpu or host_cpu()
        if not codegen.llvm_is_valid_cpu(mcpu, TRIPLE):
            raise UnknownTargetError(
                f"LLVM does not know the x86 CPU {mcpu!r}; use an LLVM name such as skylake, cascadelake, "
                "icelake-server, znver3 or znver4"
            )
        return tvm.target.Target(
            {"kind": "llvm", "mtriple": TRIPLE, "mcpu": mcpu, "num-cores": self.options.num_cores}
        )

    def info(self) -> TargetInfo:
        from tvm.target import codegen

        target = self.tvm_target()
        features = {LLVM_TO_CPUINFO[f] for f in codegen.llvm_get_cpu_features(target) if f in LLVM_TO_CPUINFO}
        return TargetInfo(
            name=self.name,
            tvm=plain(target.export()),
            arch="x86_64",
            device="cpu",
            cpu_features=sorted(features),
        )
