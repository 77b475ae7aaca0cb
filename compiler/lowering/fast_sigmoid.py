"""Sigmoids through TOPI's vectorizable exponential, for CPUs: a Relax rewrite.

TVM legalizes `relax.sigmoid` to the TIR intrinsic `tir.sigmoid`, which its LLVM backend lowers to
1 / (1 + exp(-x)) with `llvm.exp`; LLVM has no vector exp of its own (TVM links no vector math
library), so in a vectorized loop every lane becomes a scalar call of libm's `expf`. A SiLU (x ·
sigmoid(x), how PyTorch exports it) is the epilogue of nearly every conv of EfficientNet-class
networks, and there those calls took more time than the convs' multiply-adds: EfficientNet-B0's
convs with a SiLU epilogue were 11.5 of its 13.5 ms (bench/README.md, bench_unseen).

Here each float32 sigmoid becomes a TE compute of 1 / (1 + fast_exp(-x)): `topi.fast_exp` is the
Cephes-style polynomial TVM's own FastMathTransform uses for exp (range reduction by powers of two,
a degree-7 polynomial; plain arithmetic and bit shifts, which LLVM vectorizes), within a few float32
ulps of expf. The compute is elementwise, so it fuses into the conv before it like the sigmoid did.
"""

from __future__ import annotations

import logging
from typing import Any

from edgecam.compiler.lowering.calls import rewrite_calls

log = logging.getLogger(__name__)

NAME = "fast_sigmoid"  # the PrimFunc's name hint (fused kernels' names then say which sigmoid they use)


def fast_sigmoids(mod: Any) -> tuple[Any, int]:
    """`mod` with every float32 `relax.sigmoid` computed through `topi.fast_exp`; and how many."""

    def rewrite(builder: Any, call: Any) -> Any:
        from tvm import ir

        if not isinstance(getattr(call, "op", None), ir.Op) or call.op.name != "relax.sigmoid":
            return None
        if str(call.args[0].ty.dtype) != "float32":
            return None
        return builder.call_te(sigmoid, call.args[0], primfunc_name_hint=NAME)

    mod, count = rewrite_calls(mod, rewrite)
    if count:
        log.info("fast_sigmoid: %d sigmoids through a vectorizable exp", count)
    return mod, count


def sigmoid(x: Any) -> Any:
    """The TE compute 1 / (1 + fast_exp(-x)) of a float32 tensor."""
    from tvm import te, topi

    exp = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: 1.0 / (1.0 + exp(*i)), name=NAME)
