"""One way to rewrite calls of a Relax module, for the lowering rewrites that replace an op by a TE
compute of their own (packed_gemm.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (block builder, call) → the replacing expression, or None to keep the call.
Rewrite = Callable[[Any, Any], Any]


def rewrite_calls(mod: Any, rewrite: Rewrite) -> tuple[Any, int]:
    """`mod` with every call of its Relax functions that `rewrite` replaces replaced (inputs first:
    a call sees its arguments already rewritten); and how many were."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def __init__(self, module: Any) -> None:
            super().__init__(module)
            self.count = 0

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            replaced = rewrite(self.builder_, call)
            if replaced is None:
                return call
            self.count += 1
            return replaced

    rewriter = _Rewriter(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get(), rewriter.count
