"""The integer dot-product steps of aarch64 cores, for the int8 GEMMs of compiler/lowering/packed_gemm.py.

As on x86 (x86_dots.py), each step adds, for one vector of output channels, the products of a few
consecutive input channels of one position (broadcast to every lane) by those channels' weights (one
contiguous load of the packed weights). int8 models carry uint8 activations (ONNX Runtime's default)
or int8 ones; the weights are int8:

- `USDOT` (i8mm, ARMv8.6: Cortex-A510/A710, Neoverse N2/V1): 4 lanes × 4 uint8 × int8 products in
  one instruction, exactly the layers' arithmetic.
- `SDOT` (dot product, ARMv8.2: Cortex-A55, A76 and later): 4 lanes × 4 int8 × int8 products. uint8
  activations enter as a - 128 (one xor of the broadcast bytes) and the GEMM adds 128 · ΣW back
  (packed_gemm's input offset); udot would need unsigned weights, whose offset (128 · Σa) depends on
  the input rather than being a constant of the layer.
- `SMULL_SADALP` (any NEON core: Cortex-A53, A72): smull multiplies 8 signed bytes into 8 int16
  products, sadalp adds them in pairs into the 4 int32 lanes: 4 lanes × 2 products in two
  instructions, with int8 weights (smlal by element would need them widened to int16, twice the
  bytes). The pair never overflows: |(a - 128) · w| ≤ 128 · 128 = 2^14 fits int16 alone, and sadalp
  widens before it adds.

Without these LLVM compiles the GEMM's int32 loop with a widening multiply and an add per product.
ARM's smmla (i8mm's 2×8 by 8×2 matrix step) computes a 2 × 2 block of positions × channels per
instruction, a register tile this schedule does not make: not used.
"""

from __future__ import annotations

from typing import Any

from edgecam.compiler.lowering.packed_gemm import Dot
from edgecam.compiler.targets import cpu_dots

# aarch64 has 32 vector registers; a tile also holds one broadcast input per position and the
# weight vectors it loads. The widening step needs two more per product vector.
USDOT = Dot("edgecam_arm_usdot_4x4", 4, 4, "int8", 128, 20)
SDOT = Dot("edgecam_arm_sdot_4x4", 4, 4, "int8", 128, 20, input_offset=128)
SDOT_S8 = Dot("edgecam_arm_sdot_4x4_s8", 4, 4, "int8", 128, 20, input_dtype="int8")
SMULL_SADALP = Dot("edgecam_arm_smull_sadalp_4x2", 4, 2, "int8", 128, 16, input_offset=128)
SMULL_SADALP_S8 = Dot("edgecam_arm_smull_sadalp_4x2_s8", 4, 2, "int8", 128, 16, input_dtype="int8")
DOTS = (USDOT, SDOT, SDOT_S8, SMULL_SADALP, SMULL_SADALP_S8)

# The LLVM feature each step needs ("neon": every camera core) and its instructions in a disassembly.
NEEDS = {USDOT: "i8mm", SDOT: "dotprod", SDOT_S8: "dotprod", SMULL_SADALP: "neon", SMULL_SADALP_S8: "neon"}
INSTRUCTIONS = {
    USDOT: ("usdot",),
    SDOT: ("sdot",),
    SDOT_S8: ("sdot",),
    SMULL_SADALP: ("smull", "sadalp"),
    SMULL_SADALP_S8: ("smull", "sadalp"),
}


def target_dots(target: Any) -> tuple[Dot, ...]:
    """The steps `target` (an aarch64 LLVM target) may use, the fastest first for each input type,
    registered with TVM as tensor intrinsics for the GEMM schedule (compiler/targets/cpu_gemm.py)."""
    from tvm.target import codegen

    features = set(codegen.llvm_get_cpu_features(target))
    dots = tuple(dot for dot in DOTS if NEEDS[dot] in features)
    for dot in dots:
        cpu_dots.register(dot, _body(dot))
    return dots


def _body(dot: Dot) -> cpu_dots.Body:
    if dot in (SDOT, SDOT_S8, USDOT):
        return _dot4(dot)
    return _smull_sadalp(dot)


def _flip(T: Any, word: Any, bits: int, dot: Dot) -> Any:
    """uint8 bytes packed in a `bits`-bit word, each less 128 as int8 (its top bit flipped)."""
    if not dot.input_offset:
        return word
    assert dot.input_offset == 128, "a byte's offset is its top bit"
    pattern = int.from_bytes(b"\x80" * (bits // 8), "little", signed=False)
    return word ^ T.IntImm(f"int{bits}", pattern - (1 << bits))  # the same bits, signed


def _dot4(dot: Dot) -> cpu_dots.Body:
    """sdot/usdot: the 4 input bytes as one int32 broadcast to the 4 lanes, the 16 weight bytes."""
    instruction = "usdot" if dot is USDOT else "sdot"

    def body(T: Any, a: Any, b: Any, c: Any) -> Any:
        word = _flip(T, T.reinterpret(a.vload([0], f"{dot.input_dtype}x4"), dtype="int32"), 32, dot)
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(f"llvm.aarch64.neon.{instruction}.v4i32.v16i8"),
            c.vload([0], dtype="int32x4"),
            T.reinterpret(T.broadcast(word, 4), dtype="int8x16"),
            b.vload([0, 0], dtype="int8x16"),
            dtype="int32x4",
        )

    return body


def _smull_sadalp(dot: Dot) -> cpu_dots.Body:
    """The 2 input bytes as one int16 broadcast to 8 bytes; smull by the 4 × 2 weight bytes → 8 int16
    products; saddlp adds them in pairs into int32, LLVM folds the accumulation into sadalp."""

    def body(T: Any, a: Any, b: Any, c: Any) -> Any:
        half = _flip(T, T.reinterpret(a.vload([0], f"{dot.input_dtype}x2"), dtype="int16"), 16, dot)
        products = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
            T.reinterpret(T.broadcast(half, 4), dtype="int8x8"),
            b.vload([0, 0], dtype="int8x8"),
            dtype="int16x8",
        )
        return c.vload([0], dtype="int32x4") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), products, dtype="int32x4"
        )

    return body
