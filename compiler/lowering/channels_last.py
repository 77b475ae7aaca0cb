"""Convolutions in channels-last layout (NHWC activations, HWIO weights): a Relax rewrite for CPUs.

In NCHW a conv's only contiguous output axis is the row of the output map, so a CPU kernel can
vectorize only along it: 7- and 14-wide rows (49 and 196 positions) at the end of MobileNet-style
networks fill no vector register, and their pointwise convs took more than half of MobileNetV2's
time under edgecam's untuned schedule (compiler/targets/cpu_schedules.py). In NHWC/HWIO the output
channels are contiguous in the output and in the weights, so every conv vectorizes along them
(multiples of 8 or 16 in these networks), and a depthwise conv along its channels.

`to_channels_last` runs TVM's ConvertLayout for conv2d; it moves elementwise Relax ops with the layout
and puts a layout_transform where a value leaves or enters the converted region (the model's input
and output, ops it cannot move). ONNX Clip imports as `call_tir` of a TE maximum/minimum
(tvm/relax/frontend/onnx, Clip), which ConvertLayout cannot see into: a transpose pair around every
ReLU6. `_clip_as_ops` first turns those calls with a constant bound back into `relax.maximum` /
`relax.minimum`, which it can move; and `relax.clip` too (HardSwish and HardSigmoid import as it),
which ConvertLayout has no layout rule for: MobileNetV3's hard-swish convs each sat between two
transposes, its costliest kernels (MobileNetV3-Large 11.3 → 4.8 ms, bench/README.md, bench_unseen).
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"]}
_TE_CLIP = re.compile(r"(maximum|minimum)\d*")  # the PrimFuncs the ONNX importer emits for Clip


def to_channels_last(mod: Any) -> Any:
    """`mod` with every conv2d in NHWC/HWIO (weights transposed once, at compile time)."""
    from tvm import relax

    mod = relax.transform.FoldConstant()(mod)  # Clip's NaN-sanitized bounds become constants
    mod = _clip_as_ops(mod)
    mod = relax.transform.ConvertLayout(LAYOUTS)(mod)
    return relax.transform.DeadCodeElimination()(relax.transform.FoldConstant()(mod))


def _clip_as_ops(mod: Any) -> Any:
    """`call_tir(maximum|minimum, (x, scalar constant))` → `relax.maximum|minimum(x, constant)`, and
    `relax.clip(x, low, high)` → `relax.minimum(relax.maximum(x, low), high)`."""
    from tvm import ir, relax, tirx
    from tvm.ir.expr import GenericConst
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    pattern = is_op("relax.call_tir")(wildcard(), wildcard())
    ops = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}

    def as_op(call: Any, _matches: dict[Any, Any]) -> Any:
        callee, args = call.args[0], call.args[1]
        match = isinstance(callee, ir.GlobalVar) and _TE_CLIP.fullmatch(callee.name_hint)
        if not match or not isinstance(args, relax.Tuple) or len(args.fields) != 2:
            return call
        x, bound = args.fields
        shape = getattr(bound.ty, "shape", None)
        if not isinstance(bound, GenericConst) or shape is None or len(shape) != 0:
            return call
        return ops[match.group(1)](x, bound)

    clip = is_op("relax.clip")(wildcard(), varg_default_wildcard=True)

    def clip_as_ops(call: Any, _matches: dict[Any, Any]) -> Any:
        x, low, high = call.args
        if not all(isinstance(bound, tirx.IntImm | tirx.FloatImm) for bound in (low, high)):
            return call
        dtype = x.ty.dtype
        return relax.op.minimum(
            relax.op.maximum(x, relax.const(float(low.value), dtype)), relax.const(float(high.value), dtype)
        )

    out = mod.clone()
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out.update_func(gv, rewrite_call(clip, clip_as_ops, rewrite_call(pattern, as_op, func)))
    return out
