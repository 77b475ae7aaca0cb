"""Integer convolutions laid out for 4-byte dot products (x86 AVX-512 VNNI `vpdpbusd`): a Relax rewrite.

After compiler/lowering/qdq_to_integer.py and channels_last.py an int8 layer is a conv2d of uint8
NHWC activations with int8 HWIO weights into int32. LLVM compiles that with widening multiplies
(`vpmaddwd`: 2 products per 32-bit lane), no faster than float32. `vpdpbusd` adds 4 uint8 × int8
products into each int32 lane: for 16 output channels at once it takes 4 consecutive input channels of
one pixel (contiguous in NHWC, broadcast to every lane) and 64 weight bytes laid out as
[4 input channels] per output channel. `pack_int8_convs` rewrites each such conv into a TE compute
reading its weights in that layout, [KH, KW, IC/4, OC, 4] (input channels padded with zero weights to a
multiple of 4), packed once at compile time; edgecam's CPU schedule (RegisterTiles in
compiler/targets/cpu_schedules.py) then maps each 16 × 4 step onto `vpdpbusd` (DOT_16X4 below).

Taken: NHWC/HWIO uint8 × int8 → int32, groups 1, output channels a multiple of 16, constant weights.
Others (depthwise convs, 24-channel layers) keep LLVM's widening code.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgecam.compiler.lowering.calls import rewrite_calls

log = logging.getLogger(__name__)

LANES = 16  # int32 lanes of a zmm register: output channels per vpdpbusd
GROUP = 4  # input channels each lane sums per vpdpbusd
DOT_16X4 = "edgecam_vpdpbusd_16x4"
COMPUTE = "int8_dot_conv2d"  # the TE compute's name: its block's, which RegisterTiles looks for


def pack_int8_convs(mod: Any) -> tuple[Any, int]:
    """`mod` with its int8 NHWC convs reading packed weights; and how many were rewritten."""
    from tvm import relax

    def packed(builder: Any, call: Any) -> Any:
        shape = _packable(call)
        if shape is None:
            return None
        return builder.call_te(
            _packed_conv,
            call.args[0],
            relax.const(_pack(shape.weights)),
            strides=shape.strides,
            padding=shape.padding,
            dilation=shape.dilation,
            primfunc_name_hint=COMPUTE,
        )

    mod, count = rewrite_calls(mod, packed)
    if count:
        log.info("int8_dot: %d int8 convs with weights packed for vpdpbusd", count)
    return mod, count


class _Conv:
    def __init__(self, weights: np.ndarray, strides: list[int], padding: list[int], dilation: list[int]):
        self.weights, self.strides, self.padding, self.dilation = weights, strides, padding, dilation


def _packable(call: Any) -> _Conv | None:
    from tvm import ir
    from tvm.ir.expr import GenericConst

    if not isinstance(getattr(call, "op", None), ir.Op) or call.op.name != "relax.nn.conv2d":
        return None
    attrs = call.attrs
    layouts = tuple(map(str, (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)))
    data, weight = call.args
    if layouts != ("NHWC", "HWIO", "NHWC") or int(attrs.groups) != 1 or str(call.ty.dtype) != "int32":
        return None
    if str(data.ty.dtype) != "uint8" or not isinstance(weight, GenericConst):
        return None
    values = weight.value.numpy()
    if values.dtype != np.int8 or values.shape[3] % LANES:
        return None
    return _Conv(values, [int(s) for s in attrs.strides], [int(p) for p in attrs.padding],
                 [int(d) for d in attrs.dilation])  # fmt: skip


def _pack(weights: np.ndarray) -> np.ndarray:
    """HWIO int8 → [KH, KW, IC/4, OC, 4], input channels padded with zero weights."""
    kh, kw, channels, outputs = weights.shape
    groups = -(-channels // GROUP)
    padded = np.zeros((kh, kw, groups * GROUP, outputs), np.int8)
    padded[:, :, :channels] = weights
    packed = padded.reshape(kh, kw, groups, GROUP, outputs).transpose(0, 1, 2, 4, 3)
    return np.ascontiguousarray(packed)


def _packed_conv(data: Any, packed: Any, strides: list[int], padding: list[int], dilation: list[int]) -> Any:
    """The TE compute: out[n, y, x, o] = Σ u8(data[n, y·s+ky, x·s+kx, 4g+i]) · i8(w[ky, kx, g, o, i])."""
    from tvm import te, topi

    batch, height, width, channels = (int(d) for d in data.shape)
    kh, kw, groups, outputs, _ = (int(d) for d in packed.shape)
    top, left, bottom, right = padding
    extra = groups * GROUP - channels  # zero channels: their weights are zero too
    if any(padding) or extra:
        data = topi.nn.pad(data, [0, top, left, 0], [0, bottom, right, extra], pad_value=0)
    out_h = (height + top + bottom - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (width + left + right - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    rg, ri = te.reduce_axis((0, groups), "rg"), te.reduce_axis((0, GROUP), "ri")
    return te.compute(
        (batch, out_h, out_w, outputs),
        lambda n, y, x, o: te.sum(
            data[
                n, y * strides[0] + ry * dilation[0], x * strides[1] + rx * dilation[1], rg * GROUP + ri
            ].astype("int32")
            * packed[ry, rx, rg, o, ri].astype("int32"),
            axis=[ry, rx, rg, ri],
        ),
        name=COMPUTE,
    )


def register_intrinsic() -> str:
    """Register DOT_16X4 with TVM once (TVM's own x86 intrinsics module takes ~45 s to import, for
    every target's intrinsics); returns its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if TensorIntrin.get(DOT_16X4, allow_missing=True) is not None:
        return DOT_16X4

    # What one step computes: 16 int32 accumulators, each += 4 uint8 × int8 products. (TVMScript
    # buffer annotations are calls, which mypy cannot read as types.)
    @T.prim_func(s_tir=True)
    def described(
        a: T.Buffer((GROUP,), "uint8", offset_factor=1),  # type: ignore[valid-type]
        b: T.Buffer((LANES, GROUP), "int8", offset_factor=1),  # type: ignore[valid-type]
        c: T.Buffer((LANES,), "int32", offset_factor=1),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:LANES], a[0:GROUP], b[0:LANES, 0:GROUP])
            T.writes(c[0:LANES])
            for lane, k in T.grid(LANES, GROUP):
                with T.sblock("update"):
                    vl, vk = T.axis.remap("SR", [lane, k])
                    c[vl] = c[vl] + T.cast(a[vk], "int32") * T.cast(b[vl, vk], "int32")

    # How: the 4 activation bytes as one int32 broadcast to every lane, the 64 weight bytes (4 per
    # lane), one vpdpbusd. LLVM 22 declares its byte operands <64 x i8> (older LLVMs <16 x i32>).
    @T.prim_func(s_tir=True)
    def implemented(
        a: T.Buffer((GROUP,), "uint8", offset_factor=1),  # type: ignore[valid-type]
        b: T.Buffer((LANES, GROUP), "int8", offset_factor=1),  # type: ignore[valid-type]
        c: T.Buffer((LANES,), "int32", offset_factor=1),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:LANES], a[0:GROUP], b[0:LANES, 0:GROUP])
            T.writes(c[0:LANES])
            pixel = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
            pixels = T.reinterpret(T.broadcast(pixel, LANES), dtype="int8x64")
            c[T.ramp(T.int32(0), 1, LANES)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"),
                pixels,
                b.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    TensorIntrin.register(DOT_16X4, described, implemented)
    return DOT_16X4


def has_vnni(target: Any) -> bool:
    """Whether `target` may use AVX-512 VNNI (vpdpbusd on zmm registers)."""
    from tvm.target import codegen

    if target.kind.name != "llvm" or not str(target.attrs.get("mtriple", "")).startswith("x86_64"):
        return False
    return "avx512vnni" in set(codegen.llvm_get_cpu_features(target))
