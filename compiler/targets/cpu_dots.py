"""The TVM tensor intrinsic of an integer dot-product step (compiler/lowering/packed_gemm.py's `Dot`),
whatever the CPU: the step described as its scalar loop, for the GEMM schedule (cpu_gemm.py) to
find in a packed GEMM, and implemented by a target's instructions (x86_dots.py, arm_dots.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgecam.compiler.lowering.packed_gemm import Dot

# A step's body: (TVMScript module, a, b, c) → the accumulators' new vector. One expression: a name
# bound in TVMScript becomes a local buffer, which TVM allocates from its workspace pool on every
# parallel task.
Body = Callable[[Any, Any, Any, Any], Any]


def register(dot: Dot, body: Body) -> None:
    """Register `dot` with TVM as implemented by `body`, once (TVM's own intrinsics modules import
    every target's intrinsics: the x86 one takes ~45 s)."""
    from tvm.s_tir import TensorIntrin

    if TensorIntrin.get(dot.intrinsic, allow_missing=True) is None:
        TensorIntrin.register(dot.intrinsic, step(dot, None), step(dot, body))


def step(dot: Dot, body: Body | None) -> Any:
    """The step as a TVMScript function over `a` (`group` inputs), `b` (`lanes` × `group` weights) and
    `c` (`lanes` int32 sums): described as its scalar loop (`body` None), in the form packed_gemm.gemm
    computes it (the inputs less the dot's offset, where it has one), or implemented by `body`.
    (TVMScript buffer annotations are calls, which mypy cannot read as types.)"""
    from tvm.script import tirx as T

    lanes, group, offset = dot.lanes, dot.group, dot.input_offset

    @T.prim_func(s_tir=True)
    def function(
        a: T.Buffer((group,), dot.input_dtype, offset_factor=1),  # type: ignore[valid-type]
        b: T.Buffer((lanes, group), dot.weight_dtype, offset_factor=1),  # type: ignore[valid-type]
        c: T.Buffer((lanes,), "int32", offset_factor=1),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
            T.writes(c[0:lanes])
            if body is None:
                for lane, k in T.grid(lanes, group):
                    with T.sblock("update"):
                        vl, vk = T.axis.remap("SR", [lane, k])
                        if offset != 0:  # a Python bool: TVMScript takes no int here
                            c[vl] = c[vl] + (T.cast(a[vk], "int32") - offset) * T.cast(b[vl, vk], "int32")
                        else:
                            c[vl] = c[vl] + T.cast(a[vk], "int32") * T.cast(b[vl, vk], "int32")
            else:
                c[T.ramp(T.int32(0), 1, lanes)] = body(T, a, b, c)

    return function


def broadcast(T: Any, a: Any, group: str, word: str, lanes: int) -> Any:
    """`a`'s input bytes read as one `word` and broadcast to `lanes` words."""
    return T.broadcast(T.reinterpret(a.vload([0], group), dtype=word), lanes)
