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

ConvertLayout asks every op's own layout rule (FRelaxInferLayout), and on graphs from other exporters
some rules break the build: ops with a tuple result (Dropout's (output, mask)) fail "Expected nested
to match tuple", ops that change the rank (ONNX Sum imports as stack + sum over a 5-D tensor) "can't
find S in source layout ABCDE". So the rewrite moves only the ops whose rules it knows
(`MOVABLE`); `_isolate` hides every other op in a private function for the duration of the pass,
which ConvertLayout treats as a call it cannot see into: the op stays in its original layout
(its inputs transposed back, if they were converted) and gets TVM's default schedule. Should
ConvertLayout still fail, the module is built as imported (NCHW), with a warning naming the op.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"]}
_TE_CLIP = re.compile(r"(maximum|minimum)\d*")  # the PrimFuncs the ONNX importer emits for Clip

# Ops ConvertLayout may move to channels-last: one tensor in the same rank out, layout rules exercised
# by edgecam's tests and the ONNX backend conformance run (bench/bench_onnx_backend.py).
_ELEMENTWISE = (
    "abs add astype ceil clip cos divide equal erf exp floor floor_divide greater greater_equal less "
    "less_equal log maximum minimum multiply negative not_equal power round rsqrt sigmoid sign sin "
    "sqrt square subtract tanh where nn.relu nn.silu nn.gelu nn.gelu_tanh nn.leakyrelu"
)
MOVABLE = frozenset(
    [f"relax.{name}" for name in _ELEMENTWISE.split()]
    + ["relax.nn.conv2d", "relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"]
    + ["relax.nn.pad", "relax.concat", "relax.dequantize", "relax.quantize"]
)
# Reductions keep their rank (and so a layout ConvertLayout can map) only with keepdims.
_REDUCTIONS = frozenset(["relax.mean", "relax.sum", "relax.max", "relax.min"])
_KEPT = "edgecam_keep_layout"  # name hint of the private functions `_isolate` hides ops in


def to_channels_last(mod: Any) -> Any:
    """`mod` with every conv2d in NHWC/HWIO (weights transposed once, at compile time); the ops it
    does not know keep their layout (module docstring)."""
    from tvm import relax

    # Clip's NaN-sanitized bounds become constants; so do transposed Gemm weights, which
    # pack_gemms (run next) packs only as constants.
    mod = fold_constants(mod)
    mod = _clip_as_ops(mod)
    if not _has_conv2d(mod):  # nothing to convert: leave every op's layout rule alone
        return mod
    hidden, kept = _isolate(mod)
    try:
        converted = relax.transform.ConvertLayout(LAYOUTS)(hidden)
    except Exception as exc:  # TVM raises its check failures as assorted types
        log.warning(
            "channels-last conversion failed (%s); building this model in its imported NCHW layout "
            "(ops kept as they are: %s)",
            str(exc).splitlines()[-1] if str(exc) else type(exc).__name__,
            ", ".join(sorted(kept)) or "none",
        )
        return mod
    converted = _restore(converted)
    return relax.transform.DeadCodeElimination()(fold_constants(converted))


def fold_constants(mod: Any) -> Any:
    """TVM's FoldConstant, unless what it returns is ill-formed: on ONNX Slice with starts given at
    run time it leaves a call of a shape function it never adds to the module (TVM 0.27)."""
    from tvm import relax

    folded = relax.transform.FoldConstant()(mod)
    try:
        relax.analysis.well_formed(folded)  # raises where it is not; False for lesser faults
    except Exception as exc:  # TVM raises ValueError or its own error types
        log.info("not folding constants: the result would be ill-formed (%s)", str(exc).splitlines()[-1])
        return mod
    return folded


def movable(call: Any) -> bool:
    """Whether ConvertLayout may change the layout of `call` (an op call whose rule edgecam trusts)."""
    from tvm import ir, relax

    if not isinstance(call.op, ir.Op) or not isinstance(call.ty, relax.TensorType):
        return False
    name = call.op.name
    if name in _REDUCTIONS:
        return bool(call.attrs.keepdims)
    return name in MOVABLE


def _has_conv2d(mod: Any) -> bool:
    from tvm import relax

    found = False

    def visit(expr: Any) -> None:
        nonlocal found
        found = found or (isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.conv2d")

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def _isolate(mod: Any) -> tuple[Any, set[str]]:
    """`mod` with every op call that is not `movable` (and whose op has a layout rule ConvertLayout
    would ask) replaced by a call of a private function computing just that op; and those ops' names.
    `_restore` puts them back after ConvertLayout."""
    from tvm import ir, relax

    from edgecam.compiler.lowering.calls import rewrite_calls

    kept: set[str] = set()

    def hide(builder: Any, call: Any) -> Any:
        if not isinstance(call.op, ir.Op) or movable(call):
            return None
        if call.op.get_attr("FRelaxInferLayout") is None:  # ConvertLayout leaves it alone already
            return None
        outer = list(relax.analysis.free_vars(call))
        params = [relax.Var(f"arg{i}", var.ty) for i, var in enumerate(outer)]
        inner = _with_vars(call, dict(zip(outer, params, strict=True)))
        func = relax.Function(params, inner, ret_ty=call.ty, is_pure=True)
        kept.add(call.op.name)
        return relax.Call(builder.add_func(func, _KEPT), outer)

    hidden, _count = rewrite_calls(mod, hide)
    return hidden, kept


def _restore(mod: Any) -> Any:
    """`mod` with each call of an `_isolate` function replaced by the op call it hides (TVM's
    InlinePrivateFunctions would split the dataflow block there, and FuseOps fuses within blocks
    only); the functions themselves are left for DeadCodeElimination."""
    from tvm import ir

    from edgecam.compiler.lowering.calls import rewrite_calls

    def inline(_builder: Any, call: Any) -> Any:
        if not isinstance(call.op, ir.GlobalVar) or not call.op.name_hint.startswith(_KEPT):
            return None
        func = mod[call.op]
        inner = func.body.body
        for block in func.body.blocks:  # the normalizer may have bound the call to a var
            inner = next((b.value for b in block.bindings if b.var.same_as(inner)), inner)
        return _with_vars(inner, dict(zip(func.params, call.args, strict=True)))

    return rewrite_calls(mod, inline)[0]


def _with_vars(call: Any, mapping: dict[Any, Any]) -> Any:
    """`call` with the vars of its arguments replaced by `mapping`'s values."""
    from tvm import relax

    return relax.Call(call.op, [_substitute(arg, mapping) for arg in call.args], call.attrs, call.ty_args)


def _substitute(expr: Any, mapping: dict[Any, Any]) -> Any:
    """`expr` (a call argument: a var, a tuple of them, a constant, ...) with its vars replaced."""
    from tvm import relax

    if isinstance(expr, relax.Var):
        return mapping.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_substitute(field, mapping) for field in expr.fields])
    return expr


def _clip_as_ops(mod: Any) -> Any:
    """`call_tir(maximum|minimum, (x, scalar constant))` → `relax.maximum|minimum(x, constant)`, and
    `relax.clip(x, low, high)` → `relax.minimum(relax.maximum(x, low), high)`."""
    from tvm import ir, relax, tirx
    from tvm.ir.expr import GenericConst
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    pattern = is_op("relax.call_tir")(wildcard(), wildcard())
    ops = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}

    def as_op(call: Any, _matches: dict[Any, Any]) -> Any:
        if not isinstance(call, relax.Call):  # the pattern also matches a var bound to such a call
            return call
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
