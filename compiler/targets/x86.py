"""x86_64 CPUs through LLVM. The manifest lists the ISA extensions the chosen `mcpu` lets LLVM use,
so a camera without them refuses the artifact instead of dying of SIGILL (seen: a znver4 build
on an AVX2-only host)."""

from __future__ import annotations

import logging
import os
import platform
from typing import TYPE_CHECKING, Any

from pydantic import Field

from edgecam.compiler.artifact import TargetInfo, host_cpu_features
from edgecam.compiler.errors import UnknownTargetError
from edgecam.compiler.targets.base import Target, TargetOptions, plain, register_target

if TYPE_CHECKING:
    from edgecam.compiler.lowering.packed_gemm import Dot

log = logging.getLogger(__name__)

TRIPLE = "x86_64-linux-gnu"
# The x86-64 level (AVX2, FMA, BMI2: 2015+ Intel, 2017+ AMD) the bundled tuning databases are made for:
# one artifact and one database serve every such camera, whatever its exact CPU model.
PORTABLE_MCPU = "x86-64-v3"

# LLVM feature name → /proc/cpuinfo flag (Linux cpufeatures.h names), for every extension whose
# instructions LLVM may emit in generated code: absent on the camera means SIGILL. Left out on purpose:
# the x86-64 baseline (sse2, cmov, ...), tuning pseudo-features (fast-*, evex512) and system
# instructions codegen never emits (xsave, rdrnd, mwaitx, rdpru, ...): a VM often hides the last
# kind, so listing them would make hosts refuse code they run fine.
LLVM_TO_CPUINFO = {
    "sse3": "pni",
    "ssse3": "ssse3",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "sse4a": "sse4a",
    "popcnt": "popcnt",
    "lzcnt": "abm",
    "movbe": "movbe",
    "cx16": "cx16",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "adx": "adx",
    "aes": "aes",
    "pclmul": "pclmulqdq",
    "sha": "sha_ni",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "fma4": "fma4",
    "xop": "xop",
    "tbm": "tbm",
    "f16c": "f16c",
    "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq",
    "gfni": "gfni",
    "avxvnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512cd": "avx512cd",
    "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
}


def host_cpu() -> str:
    """LLVM's name for this machine's CPU model (e.g. znver3); only meaningful on an x86_64 host."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def portable_options() -> dict[str, Any]:
    """{"mcpu": PORTABLE_MCPU} when this host has every feature that level needs, else {} (the host's
    own CPU): what `edgecam demo` builds with, so it hits the committed tuning database."""
    import tvm

    needed = required_cpu_features(
        tvm.target.Target({"kind": "llvm", "mtriple": TRIPLE, "mcpu": PORTABLE_MCPU})
    )
    host = host_cpu_features()
    return {"mcpu": PORTABLE_MCPU} if host and set(needed) <= host else {}


def required_cpu_features(target: Any) -> list[str]:
    """The /proc/cpuinfo flags a host needs to run code LLVM generates for `target` (mcpu + mattr)."""
    from tvm.target import codegen

    llvm = set(codegen.llvm_get_cpu_features(target))
    return sorted({LLVM_TO_CPUINFO[f] for f in llvm if f in LLVM_TO_CPUINFO})


class X86Options(TargetOptions):
    mcpu: str | None = Field(default=None, description="LLVM CPU name; default: this build host's CPU")
    mattr: list[str] = Field(
        default_factory=list, description="LLVM features to add or remove, e.g. ['-avx512f']"
    )
    num_cores: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)


@register_target
class X86Target(Target):
    name = "x86_64"
    options_class = X86Options
    integer_qdq = True
    channels_last = True
    integer_channels_last = True
    options: X86Options

    def tvm_target(self) -> Any:
        import tvm
        from tvm.target import codegen

        mcpu = self.options.mcpu or self._host_mcpu()
        if not codegen.llvm_is_valid_cpu(mcpu, TRIPLE):
            raise UnknownTargetError(
                f"LLVM does not know the x86 CPU {mcpu!r}; use an LLVM name such as x86-64-v3, skylake, "
                "cascadelake, icelake-server, znver3 or znver4"
            )
        config: dict[str, Any] = {"kind": "llvm", "mtriple": TRIPLE, "mcpu": mcpu}
        config["num-cores"] = self.options.num_cores
        mattr = list(self.options.mattr)
        if self.options.mcpu is None:
            mattr += self._features_the_host_hides(tvm.target.Target(config))
        if mattr:
            config["mattr"] = mattr
        return tvm.target.Target(config)

    @staticmethod
    def _host_mcpu() -> str:
        if platform.machine() != "x86_64":
            raise UnknownTargetError(
                f"this build host is {platform.machine()}, so it has no x86 CPU to default to; "
                "pass --mcpu (e.g. x86-64-v3, znver3, icelake-server)"
            )
        return host_cpu()

    @staticmethod
    def _features_the_host_hides(target: Any) -> list[str]:
        """`-feature` for extensions the CPU model implies but this host does not offer.

        LLVM names the CPU model from CPUID family/model, but a hypervisor may hide extensions of that
        model (AVX-512 is a common one); code built for the bare model would then die of SIGILL here.
        """
        host = host_cpu_features()
        if not host:  # no /proc/cpuinfo to compare with: trust the CPU model
            return []
        to_llvm = {flag: llvm for llvm, flag in LLVM_TO_CPUINFO.items()}
        hidden = sorted(set(required_cpu_features(target)) - host)
        if hidden:
            log.info("this host's CPU model implies %s, but the host lacks them: building without", hidden)
        return [f"-{to_llvm[flag]}" for flag in hidden]

    def int8_dots(self, target: Any) -> tuple[Dot, ...]:
        """vpdpbusd with AVX-512 VNNI or AVX-VNNI; else vpmaddubsw (7-bit weights) or vpmaddwd on AVX2."""
        from edgecam.compiler.targets import x86_dots

        return x86_dots.target_dots(target)

    def info(self) -> TargetInfo:
        target = self.tvm_target()
        return TargetInfo(
            name=self.name,
            tvm=plain(target.export()),
            arch="x86_64",
            device="cpu",
            cpu_features=required_cpu_features(target),
        )
