"""Fold QDQ fake quantization into integer convolutions and matmuls: a Relax rewrite.

TVM 0.27's ONNX importer turns an ONNX Runtime QDQ model into float32 `conv2d`/`matmul` between
`quantize`/`dequantize` pairs (docs/tvm-notes.md): an int8 model runs as fp32 plus the cost
of the Q/DQ ops. `fold_qdq` rewrites each quantized layer into integer arithmetic:

    conv2d(dequantize(x_q, s_x, z_x), dequantize(W_q, s_w, 0))        (matmul alike, Gemm's Wᵀ too)
      → dequantize(conv2d(pad(x_q, z_x), W_q, out_dtype=int32) - z_x·ΣW, s_x·s_w, 0)
    dequantize(acc, s, 0) + bias                 → dequantize(acc + round(bias / s), s, 0)
                                                   (one constant with the zero-point correction)
    quantize([relu](dequantize(acc, s, 0)), s_y, z_y)  → clip(round(acc · s/s_y) + z_y, lo, hi)
    quantize(max_pool2d|reshape|permute_dims(dequantize(q, s, z)), s, z) → the same op on q
    quantize(dequantize(a) + dequantize(b), s_y, z_y)  → elementwise ops: round((a-z_a)·s_a/s_y + …)

A layer whose result is read as float (the logits) keeps its dequantize: one multiply per output.
So does one with another activation before its quantize (ONNX Clip imports as TE maximum/minimum):
its conv is integer, and the float epilogue fuses into the conv's output loop like the rest.

The input is padded with its zero point (the quantized 0.0) before an unpadded conv2d, so the
zero-point correction z_x·ΣW is one constant per output channel, borders included; with z_x = 0
(ReLU outputs, symmetric int8) the conv keeps its own zero padding and needs no correction.

A residual add keeps the QDQ arithmetic in float32 (each input's zero point off, times its scale over
the output's, added, rounded, the output's zero point on: ONNX Runtime's QLinearAdd) but written with
astype/subtract/multiply/round/maximum/minimum on scalar constants: TVM's ConvertLayout has no layout
rule for quantize/dequantize and left each such add in NCHW between transposes of both inputs and of
its output (about 6% of MobileNetV2's int8 time on a znver3); the elementwise ops move to channels-last
with the convs around them.

Requantization multiplies in float32 and rounds half to even, as ONNX Runtime's int8 kernels do
(MLAS requantizes with a float scale), so results match ORT's rather than being off by a rounding;
every CPU target here has fast float SIMD, and the multiply fuses into the conv's output loop. A
fixed-point multiplier (gemmlowp/TFLite style) would only pay off on integer-only hardware. The
rounded value is converted to int32 before the zero point and the clamp, so LLVM clamps with the
saturating packs that narrow it to 8 bits (with the bias joined to the zero-point correction:
MobileNetV2 int8 4-10% faster at one thread).

Foldable: activations with one scale and zero point; constant int8 weights with zero point 0 and a
scale per tensor or per output channel; conv2d in NCHW/OIHW. Other layers stay as imported and are
listed in `Folding.left` (and logged).
"""

from __future__ import annotations

import functools
import logging
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Float layers that should have become integer ones when an operand is dequantized.
LAYER_OPS = (
    "relax.nn.conv1d",
    "relax.nn.conv2d",
    "relax.nn.conv3d",
    "relax.nn.conv2d_transpose",
    "relax.matmul",
)
# Ops that only move or select values (name → extra arguments): with one scale and zero point on
# both sides, quantize(op(dequantize(q))) is op(q).
_MOVERS = {"relax.nn.max_pool2d": 0, "relax.permute_dims": 0, "relax.reshape": 1}
_QUANTIZED = ("uint8", "int8")


@dataclass
class Folding:
    """What `fold_qdq` did to a module."""

    folded: Counter[str] = field(default_factory=Counter)  # "conv2d"/"matmul" → layers now in integers
    requantized: int = 0  # integer layers whose output quantize became an integer requantize
    biases: int = 0  # biases added to the int32 accumulator
    elided: int = 0  # quantize(op(dequantize(q))) removed around max_pool2d/reshape/...
    adds: int = 0  # quantize(dequantize(a) + dequantize(b)) written as elementwise ops
    left: dict[str, str] = field(default_factory=dict)  # float layer reading a dequantized input → why

    def summary(self) -> str:
        done = ", ".join(f"{n} {op}" for op, n in sorted(self.folded.items())) or "no layer"
        text = (
            f"{done} in integers ({self.requantized} requantized, {self.biases} int32 biases, "
            f"{self.elided} quantize/dequantize pairs dropped around max_pool2d/reshape, "
            f"{self.adds} 8-bit adds as elementwise ops)"
        )
        return text + (f"; {len(self.left)} left in float32: {self.left}" if self.left else "")


def has_qdq(mod: Any) -> bool:
    """Whether a Relax function of `mod` dequantizes anything (the mark of a QDQ model)."""
    return any(_op_name(b.value) == "relax.dequantize" for _, b in _bindings(mod))


def fold_qdq(mod: Any) -> tuple[Any, Folding]:
    """`mod` with its quantized conv2d/matmul layers in integer arithmetic, and what changed."""
    from tvm import relax

    rewrites = _Rewrites()
    out = mod.clone()
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out.update_func(gv, rewrites.apply(func))
    rewrites.folding.left = _float_layers(out, rewrites.reasons)
    if rewrites.folding.left:
        log.warning("qdq_to_integer: %s", rewrites.folding.summary())
    else:
        log.info("qdq_to_integer: %s", rewrites.folding.summary())
    return out, rewrites.folding


class _Rewrites:
    """The patterns and their rewriters; `folding` and `reasons` collect what happened."""

    def __init__(self) -> None:
        from tvm.relax.dpl import is_const, is_op, wildcard

        def dq(data: Any = None) -> Any:
            return is_op("relax.dequantize")(data if data is not None else wildcard(), wildcard(), wildcard())

        self.folding = Folding()
        self.reasons: dict[Any, str] = {}  # float layer call → why it was not folded
        self.x, self.w = dq(), dq()
        self.w_t = is_op("relax.permute_dims")(self.w)
        self.conv = is_op("relax.nn.conv2d")(self.x, self.w)
        self.matmul = is_op("relax.matmul")(self.x, self.w | self.w_t)
        # A conv's zero-point correction (subtract z_x·ΣW), which the bias then joins.
        self.corrected = is_op("relax.subtract")(wildcard().has_dtype("int32"), is_const())
        self.acc = is_op("relax.dequantize")(
            self.corrected | wildcard().has_dtype("int32"), is_const(), is_const()
        )
        self.bias_dq = dq(is_const())
        self.bias_reshape = is_op("relax.reshape")(self.bias_dq, wildcard())
        self.bias = self.bias_reshape | self.bias_dq | is_const()
        self.add = is_op("relax.add")(self.acc, self.bias)
        self.relu = is_op("relax.nn.relu")(self.acc)
        self.requant = is_op("relax.quantize")(self.acc | self.relu, is_const(), is_const())
        self.moved = dq()
        movers = [is_op(op)(self.moved, *[wildcard()] * extra) for op, extra in _MOVERS.items()]
        self.mover = functools.reduce(operator.or_, movers)
        self.elide = is_op("relax.quantize")(self.mover, is_const(), is_const())
        self.left, self.right = dq(), dq()
        self.residual = is_op("relax.quantize")(
            is_op("relax.add")(self.left, self.right), is_const(), is_const()
        )

    def apply(self, func: Any) -> Any:
        from tvm.relax.dpl import rewrite_call

        for pattern, rewriter in (
            (self.conv, self._conv),
            (self.matmul, self._matmul),
            (self.add, self._bias),
            (self.requant, self._requantize),
            (self.elide, self._elide),
            (self.residual, self._residual),
        ):
            func = rewrite_call(pattern, rewriter, func)
        return func

    def _skip(self, call: Any, reason: str) -> Any:
        self.reasons[call] = reason
        return call

    def _conv(self, call: Any, m: dict[Any, Any]) -> Any:
        from tvm import relax

        attrs = call.attrs
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
        if tuple(map(str, layouts)) != ("NCHW", "OIHW", "NCHW"):
            return self._skip(call, f"conv2d layouts {'/'.join(map(str, layouts))}, not NCHW/OIHW")
        if str(call.ty.dtype) != "float32":  # the dequantize that replaces it computes float32
            return self._skip(call, f"conv2d computes {call.ty.dtype}, not float32")
        x = _activation(m[self.x])
        w = _weight(m[self.w], channel_axis=0)
        if isinstance(x, str) or isinstance(w, str):
            return self._skip(call, x if isinstance(x, str) else str(w))
        data, padding = x.data, [int(p) for p in attrs.padding]
        if x.zero != 0 and any(padding):
            top, left, bottom, right = padding
            pads = [0, 0, 0, 0, top, bottom, left, right]
            data, padding = relax.op.nn.pad(data, pads, pad_value=float(x.zero)), [0, 0, 0, 0]
        acc = relax.op.nn.conv2d(
            data, relax.const(w.values), attrs.strides, padding, attrs.dilation, attrs.groups,
            out_dtype="int32",
        )  # fmt: skip
        if x.zero != 0:
            sums = w.values.astype(np.int64).sum(axis=(1, 2, 3)).reshape(1, -1, 1, 1)
            acc = relax.op.subtract(acc, relax.const(_int32(x.zero * sums)))
        self.folding.folded["conv2d"] += 1
        return _dequantize(acc, x.scale * w.scale, axis=1)

    def _matmul(self, call: Any, m: dict[Any, Any]) -> Any:
        from tvm import relax

        if str(call.ty.dtype) != "float32":
            return self._skip(call, f"matmul computes {call.ty.dtype}, not float32")
        transposed = m.get(self.w_t) is not None
        x = _activation(m[self.x])
        w = _weight(m[self.w], channel_axis=0 if transposed else 1, ndim=2)
        if isinstance(x, str) or isinstance(w, str):
            return self._skip(call, x if isinstance(x, str) else str(w))
        values = w.values.T if transposed else w.values  # [K, N]: N output channels
        acc = relax.op.matmul(x.data, relax.const(np.ascontiguousarray(values)), out_dtype="int32")
        if x.zero != 0:
            acc = relax.op.subtract(acc, relax.const(_int32(x.zero * values.astype(np.int64).sum(axis=0))))
        self.folding.folded["matmul"] += 1
        return _dequantize(acc, x.scale * w.scale, axis=len(call.ty.shape) - 1)

    def _bias(self, call: Any, m: dict[Any, Any]) -> Any:
        from tvm import relax

        acc, scale, axis = _accumulator(m[self.acc])
        bias = _bias_values(m, self.bias_dq, self.bias_reshape, self.bias)
        shape = _shape(acc)
        if bias is None or scale is None or shape is None:
            return call
        coded = bias / _broadcastable(scale, axis, len(shape))
        if np.broadcast_shapes(coded.shape, shape) != shape:  # the bias would widen the output
            return call
        if not np.allclose(coded, np.round(coded), rtol=0, atol=1e-3):
            return call  # not whole accumulator steps (a float bias): exact only as a float add
        self.folding.biases += 1
        coded = np.round(coded)
        corrected = m.get(self.corrected)
        correction = None if corrected is None else _constant(corrected.args[1])
        if corrected is not None and correction is not None:  # one constant instead of two adds
            return _dequantize(
                relax.op.add(corrected.args[0], relax.const(_int32(coded - correction))), scale, axis
            )
        return _dequantize(relax.op.add(acc, relax.const(_int32(coded))), scale, axis)

    def _requantize(self, call: Any, m: dict[Any, Any]) -> Any:
        from tvm import relax

        acc, scale, axis = _accumulator(m[self.acc])
        out_dtype = str(call.attrs.out_dtype)
        y_scale, y_zero = _scalar(call.args[1]), _scalar(call.args[2])
        if scale is None or y_scale is None or y_zero is None or out_dtype not in _QUANTIZED:
            return call
        info = np.iinfo(out_dtype)
        low, high = int(info.min), int(info.max)
        if m.get(self.relu) is not None:  # quantize is monotonic and maps 0.0 to y_zero
            low = max(low, int(y_zero))
        # ORT's order: the multiplier is (s_x·s_w)/s_y rounded to float32, applied to float32(acc).
        multiplier = (scale.astype(np.float32) / np.float32(y_scale)).astype(np.float32)
        value = relax.op.astype(acc, "float32")
        value = relax.op.multiply(value, relax.const(_broadcastable(multiplier, axis, len(acc.ty.shape))))
        value = relax.op.round(value)  # half to even (LLVM nearbyint), like ORT's
        self.folding.requantized += 1
        return _narrowed(value, int(y_zero), low, high, out_dtype)

    def _elide(self, call: Any, m: dict[Any, Any]) -> Any:
        from tvm import relax

        inner, mover = m[self.moved], m[self.mover]
        data = inner.args[0]
        same = all(_equal_constants(a, b) for a, b in zip(inner.args[1:], call.args[1:], strict=True))
        if not same or _scalar(call.args[1]) is None or str(data.ty.dtype) != str(call.attrs.out_dtype):
            return call  # per-channel parameters could follow the moved axes: not worth the risk
        self.folding.elided += 1
        return relax.Call(mover.op, [data, *mover.args[1:]], mover.attrs, mover.ty_args)

    def _residual(self, call: Any, m: dict[Any, Any]) -> Any:
        from tvm import relax

        left, right = _activation(m[self.left]), _activation(m[self.right])
        out_dtype = str(call.attrs.out_dtype)
        y_scale, y_zero = _scalar(call.args[1]), _scalar(call.args[2])
        if isinstance(left, str) or isinstance(right, str) or y_scale is None or y_zero is None:
            return call
        shape = _shape(call)
        if (
            out_dtype not in _QUANTIZED
            or shape is None
            or not _shape(left.data) == _shape(right.data) == shape
        ):
            return call  # a broadcasting or symbolic add: leave it as imported

        def rescaled(x: _Activation) -> Any:  # x's dequantized value in units of the output's scale
            value = relax.op.astype(x.data, "float32")
            if x.zero:
                value = relax.op.subtract(value, relax.const(np.float32(x.zero)))
            return relax.op.multiply(value, relax.const((x.scale / np.float32(y_scale)).astype(np.float32)))

        # Each input's scale over the output's, as ONNX Runtime's QLinearAdd computes: two multiplies
        # instead of a float division per element (EfficientNet-Lite0 at one thread: 0.4-1.2% faster).
        value = relax.op.round(relax.op.add(rescaled(left), rescaled(right)))
        info = np.iinfo(out_dtype)
        self.folding.adds += 1
        return _narrowed(value, int(y_zero), int(info.min), int(info.max), out_dtype)


@dataclass
class _Activation:
    data: Any  # the uint8/int8 tensor that was dequantized
    scale: np.ndarray  # float32, shape ()
    zero: int


@dataclass
class _Weight:
    values: np.ndarray  # int8
    scale: np.ndarray  # float32, shape () or (output channels,)


def _activation(dq: Any) -> _Activation | str:
    data = dq.args[0]
    dtype = str(data.ty.dtype)
    scale, zero = _scalar(dq.args[1]), _scalar(dq.args[2])
    if dtype not in _QUANTIZED:
        return f"input is {dtype}, not uint8/int8"
    if scale is None or zero is None:
        return (
            "input is quantized per channel or with non-constant parameters (needs one scale and zero point)"
        )
    return _Activation(data, np.asarray(scale, np.float32), int(zero))


def _weight(dq: Any, channel_axis: int, ndim: int | None = None) -> _Weight | str:
    values, scale, zero = (_constant(arg) for arg in dq.args)
    if values is None or scale is None or zero is None:
        return "weight is not a constant read through dequantize"
    if values.dtype != np.int8 or (ndim is not None and values.ndim != ndim):
        return f"weight is {values.dtype}{list(values.shape)}, not int8" + (
            f" of rank {ndim}" if ndim else ""
        )
    if np.any(zero != 0):
        return "weight zero point is not 0"
    axis = int(dq.attrs.axis) % values.ndim
    if scale.size != 1 and (scale.size != values.shape[channel_axis] or axis != channel_axis):
        return f"weight scale varies along axis {axis}, not only along output channels"
    return _Weight(values, scale.astype(np.float32).reshape(-1) if scale.size > 1 else scale.reshape(()))


def _accumulator(dq: Any) -> tuple[Any, np.ndarray | None, int]:
    """(int32 accumulator, its float32 scale, scale axis) of a dequantize made by this pass; scale None
    for any other dequantize of int32 (one with a zero point)."""
    scale, zero = _constant(dq.args[1]), _constant(dq.args[2])
    axis = int(dq.attrs.axis) % max(len(dq.args[0].ty.shape), 1)
    if scale is None or zero is None or np.any(zero != 0):
        return dq.args[0], None, axis
    return dq.args[0], scale.astype(np.float32), axis


def _bias_values(
    m: dict[Any, Any], dq_pattern: Any, reshape_pattern: Any, any_pattern: Any
) -> np.ndarray | None:
    """The float values (in the add's broadcast shape) of a constant, dequantized or reshaped bias."""
    reshape, dq = m.get(reshape_pattern), m.get(dq_pattern)
    if dq is not None:
        values, scale, zero = (_constant(arg) for arg in dq.args)
        if values is None or scale is None or zero is None:
            return None
        rank = values.ndim
        axis = int(dq.attrs.axis) % max(rank, 1)
        bias = (values.astype(np.float64) - _broadcastable(zero, axis, rank)) * _broadcastable(
            scale, axis, rank
        )
    else:
        bias = _constant(m[any_pattern])
        if bias is None or bias.dtype.kind != "f":
            return None
    if reshape is not None:
        bias = bias.reshape([int(d) for d in reshape.ty.shape])
    return bias.astype(np.float64)


def _narrowed(rounded: Any, zero: int, low: int, high: int, dtype: str) -> Any:
    """`rounded` (whole float32 values) + `zero`, clamped to [low, high], as `dtype`. In int32: LLVM
    then clamps with the saturating packs it narrows to 8 bits with anyway (vpackssdw/vpackuswb),
    where float bounds cost a max and a min per vector. A float beyond int32 would need a value ~10⁷×
    its calibrated range."""
    from tvm import relax

    value = relax.op.astype(rounded, "int32")
    if zero:
        value = relax.op.add(value, relax.const(np.int32(zero)))
    # maximum/minimum rather than clip: ConvertLayout moves them with a channels-last layout
    # (compiler/lowering/channels_last.py) but wraps a clip in a transpose pair.
    value = relax.op.maximum(value, relax.const(np.int32(low)))
    value = relax.op.minimum(value, relax.const(np.int32(high)))
    return relax.op.astype(value, dtype)


def _dequantize(acc: Any, scale: np.ndarray, axis: int) -> Any:
    from tvm import relax

    return relax.op.dequantize(
        acc, relax.const(np.asarray(scale, np.float32)), relax.const(np.int32(0)), axis=axis
    )


def _broadcastable(values: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """Per-axis `values` shaped to broadcast along `axis` of a rank-`rank` tensor (scalars stay)."""
    if values.size == 1:
        return values.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return values.reshape(shape)


def _int32(values: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.int32)
    return np.clip(values, info.min, info.max).astype(np.int32)


def _shape(expr: Any) -> tuple[int, ...] | None:
    """The static shape of a tensor expression; None when a dimension is symbolic."""
    from tvm import tirx

    dims = getattr(getattr(expr, "ty", None), "shape", None)
    if dims is None or not all(isinstance(d, tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _constant(expr: Any) -> np.ndarray | None:
    from tvm.ir.expr import GenericConst

    if isinstance(expr, GenericConst) and hasattr(expr.value, "numpy"):
        return np.asarray(expr.value.numpy())
    return None


def _equal_constants(a: Any, b: Any) -> bool:
    left, right = _constant(a), _constant(b)
    return left is not None and right is not None and np.array_equal(left, right)


def _scalar(expr: Any) -> float | None:
    value = _constant(expr)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _op_name(expr: Any) -> str | None:
    from tvm.ir import Op

    op = getattr(expr, "op", None)
    return str(op.name) if isinstance(op, Op) else None


def _bindings(mod: Any) -> list[tuple[str, Any]]:
    """(function name, binding) for every binding of every Relax function of `mod`."""
    from tvm import relax

    found = []
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            found += [(gv.name_hint, b) for block in func.body.blocks for b in block.bindings]
    return found


def _float_layers(mod: Any, reasons: dict[Any, str]) -> dict[str, str]:
    """Layers (conv/matmul) still reading a dequantized operand in float32, by bound variable → why."""
    values = {b.var: b.value for _, b in _bindings(mod)}
    left = {}
    for name, binding in _bindings(mod):
        value = binding.value
        if _op_name(value) not in LAYER_OPS:
            continue
        if any(_op_name(values.get(arg)) == "relax.dequantize" for arg in value.args):
            why = next((r for call, r in reasons.items() if call.same_as(value)), None)
            left[f"{name}/{binding.var.name}"] = why or f"no integer rewrite for {_op_name(value)}"
    return left
