"""The integer dot-product steps of x86 CPUs, for the int8 GEMMs of compiler/lowering/packed_gemm.py.

An int8 layer is a GEMM of uint8 activations by int8 weights into int32 sums. Each step below adds,
for one vector of output channels, the products of a few consecutive input channels of one position
(broadcast to every lane) by those channels' weights (one contiguous load of the packed weights):

- `VPDPBUSD` (AVX-512 VNNI): 16 lanes × 4 uint8 × int8 products, one instruction.
- `VPDPBUSD_YMM` (AVX-VNNI, the VEX form on CPUs without AVX-512: Intel's Alder Lake and later client
  cores, N100-class boxes among them): 8 lanes × 4 products, one instruction.
- `VPMADDUBSW` (AVX2): 8 lanes × 4 products: vpmaddubsw adds pairs of uint8 × int8 products into
  int16, vpmaddwd adds pairs of those into int32. The int16 pair saturates unless
  255 · (|w0| + |w1|) ≤ 32767, so only layers whose weights all keep |w| ≤ 64 take it (ONNX
  Runtime's 7-bit `reduce_range` weights; the int8 pass's `reduce_range: true`).
- `VPMADDWD` (AVX2): 8 lanes × 2 products, exact for any int8 weights: the two input bytes are
  zero-extended to int16 (vpbroadcastw + vpmovzxbw), the weights are packed as int16, and vpmaddwd
  adds the pair into int32.

LLVM compiles the plain int32 loop with a widening multiply and an add per product; a znver3 core
issues two vpmaddwd per cycle, so the two AVX2 steps can run at 2× and 4× the multiply-adds per
instruction of a float FMA, and their weights are a quarter (int16: half) the bytes.
"""

from __future__ import annotations

from typing import Any

from edgecam.compiler.lowering.packed_gemm import Dot
from edgecam.compiler.targets import cpu_dots
from edgecam.compiler.targets.cpu_dots import Body, broadcast

# AVX-512 has 32 vector registers; vpdpbusd accumulates in place.
VPDPBUSD = Dot("edgecam_vpdpbusd_16x4", 16, 4, "int8", 128, 16)
# AVX2's 16 registers: the sums, the broadcast input and a weight vector (vpdpbusd adds in place).
VPDPBUSD_YMM = Dot("edgecam_vpdpbusd_8x4", 8, 4, "int8", 128, 12)
# AVX2 has 16: the step also needs the broadcast input, the products and (vpmaddubsw) a vector of ones.
VPMADDUBSW = Dot("edgecam_vpmaddubsw_8x4", 8, 4, "int8", 64, 10)
VPMADDWD = Dot("edgecam_vpmaddwd_8x2", 8, 2, "int16", 128, 10)
DOTS = (VPDPBUSD, VPDPBUSD_YMM, VPMADDUBSW, VPMADDWD)


def target_dots(target: Any) -> tuple[Dot, ...]:
    """The steps `target` (an x86 LLVM target) may use, the fastest first, registered with TVM as
    tensor intrinsics for the GEMM schedule (compiler/targets/cpu_gemm.py) to tensorize with."""
    from tvm.target import codegen

    features = set(codegen.llvm_get_cpu_features(target))
    if "avx512vnni" in features:
        dots: tuple[Dot, ...] = (VPDPBUSD,)
    elif "avxvnni" in features:
        dots = (VPDPBUSD_YMM,)
    else:
        dots = (VPMADDUBSW, VPMADDWD) if "avx2" in features else ()
    for dot in dots:
        cpu_dots.register(dot, _BODIES[dot.intrinsic])
    return dots


def _vpdpbusd(lanes: int) -> Body:
    """One vpdpbusd over `lanes` int32 sums: the 4 input bytes as one int32 broadcast to every lane, the
    4 × `lanes` weight bytes. 16 lanes: AVX-512 VNNI; 8: LLVM encodes the 256-bit intrinsic as AVX-VNNI's
    VEX vpdpbusd where the target has AVX-VNNI and not AVX-512 VNNI with VL. LLVM 22 declares the byte
    operands <4·lanes x i8> (older LLVMs <lanes x i32>)."""
    bits = 32 * lanes

    def body(T: Any, a: Any, b: Any, c: Any) -> Any:
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(f"llvm.x86.avx512.vpdpbusd.{bits}"),
            c.vload([0], dtype=f"int32x{lanes}"),
            T.reinterpret(broadcast(T, a, "uint8x4", "int32", lanes), dtype=f"int8x{4 * lanes}"),
            b.vload([0, 0], dtype=f"int8x{4 * lanes}"),
            dtype=f"int32x{lanes}",
        )

    return body


def _vpmaddubsw(T: Any, a: Any, b: Any, c: Any) -> Any:
    """The 4 input bytes broadcast as one int32; vpmaddubsw → 16 int16 pair sums; vpmaddwd by ones →
    8 int32 sums of 4 products, added to the accumulators."""
    return c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
        T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
            T.reinterpret(broadcast(T, a, "uint8x4", "int32", 8), dtype="int8x32"),
            b.vload([0, 0], dtype="int8x32"),
            dtype="int16x16",
        ),
        T.broadcast(T.int16(1), 16),
        dtype="int32x8",
    )


def _vpmaddwd(T: Any, a: Any, b: Any, c: Any) -> Any:
    """The 2 input bytes broadcast as one int16 and zero-extended to 8 int16 pairs; vpmaddwd by the
    8 × 2 int16 weights → 8 int32 sums of 2 products, added to the accumulators."""
    return c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
        T.Cast("int16x16", T.reinterpret(broadcast(T, a, "uint8x2", "int16", 8), dtype="uint8x16")),
        b.vload([0, 0], dtype="int16x16"),
        dtype="int32x8",
    )


_BODIES: dict[str, Body] = {
    VPDPBUSD.intrinsic: _vpdpbusd(VPDPBUSD.lanes),
    VPDPBUSD_YMM.intrinsic: _vpdpbusd(VPDPBUSD_YMM.lanes),
    VPMADDUBSW.intrinsic: _vpmaddubsw,
    VPMADDWD.intrinsic: _vpmaddwd,
}
