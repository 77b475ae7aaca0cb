"""GPU schedules edgecam adds to TVM's untuned CUDA pipeline.

TVM 0.27 schedules every fused kernel with DLight's default rules, tried in order: Matmul, GEMV,
Reduction, GeneralReduction, Fallback. A depthwise convolution matches none of the first three and
lands in GeneralReduction, which gives each output element a block of 256 threads that share its
reduction: for a 3×3 depthwise conv that is 9 useful threads out of 256, and on an H100 such kernels
took 2 of MobileNetV2's 2.7 ms. `ThreadPerOutput` takes these kernels first: one thread per output
element, the short reduction run serially in a register, the fused epilogue (bias, ReLU6) applied by
the same thread.
"""

from __future__ import annotations

import math
from typing import Any

# Reductions this short are cheaper serial in one thread than shared between threads; a 7×7
# depthwise conv (49) and a 7×7 global average pool (49) still qualify, a 1×1 conv over 64 input
# channels (DLight's Matmul rule takes those anyway) would not.
MAX_SERIAL_REDUCTION = 64
THREADS_PER_BLOCK = 256


def schedule_rules() -> list[Any]:
    """DLight's default GPU rules with ThreadPerOutput placed before the reductions'."""
    from tvm.s_tir import dlight as dl

    return [
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        ThreadPerOutput(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]


def default_pipeline(target: Any) -> Any:
    """TVM's default CUDA pipeline (relax/backend/cuda/pipeline.py) with `schedule_rules()`."""
    import tvm
    from tvm.relax.backend.cuda import pipeline
    from tvm.s_tir import dlight as dl

    legalize = pipeline.legalize_passes(target)
    # TVM's legalization ends with its own ApplyDefaultSchedule, which leaves alone what ours (placed
    # just before it, with every rule) already scheduled: only the rule order changes.
    legalize = [*legalize[:-1], dl.ApplyDefaultSchedule(*schedule_rules()), legalize[-1]]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: Any, _context: Any) -> Any:
        with target:
            passes = pipeline.library_dispatch_passes(target) + legalize
            passes += pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def _rule_base() -> type:
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

    return GPUScheduleRule


class ThreadPerOutput(_rule_base()):  # type: ignore[misc]
    """One thread per output element for a kernel with one short reduction (≤ MAX_SERIAL_REDUCTION
    iterations) followed by elementwise work; any other kernel is left to the next rule."""

    def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
        from tvm import s_tir, tirx
        from tvm.s_tir.dlight.analysis import normalize_prim_func
        from tvm.s_tir.dlight.base import try_inline

        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)  # padding and other producers fold into the reduction's reads
        if not infos or not infos[0].is_reduction() or any(i.is_reduction() for i in infos[1:]):
            return None
        reduction, epilogue = infos[0], infos[1:]
        extents = [i.dom for i in reduction.iters if i.kind == "R"]
        if not all(isinstance(e, int) for e in extents) or math.prod(extents) > MAX_SERIAL_REDUCTION:
            return None
        if len(epilogue) > 1 or (epilogue and not epilogue[0].is_injective()):
            return None

        block = reduction.block_rv
        loops = sch.get_loops(block)
        spatial = [loop for loop, kind in zip(loops, reduction.dom_kind(), strict=True) if kind == "S"]
        reduce = [loop for loop, kind in zip(loops, reduction.dom_kind(), strict=True) if kind == "R"]
        if len(spatial) + len(reduce) != len(loops):
            return None
        sch.reorder(*spatial, *reduce)
        bx, tx = sch.split(sch.fuse(*spatial), factors=[None, THREADS_PER_BLOCK])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        if epilogue:
            # The reduction's result lives in a register and the same thread finishes the element.
            sch.reverse_compute_at(epilogue[0].block_rv, tx)
            sch.set_scope(block, 0, "local")
        sch.decompose_reduction(block, reduce[0])
        return sch
