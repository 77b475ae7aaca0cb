"""A CPU schedule edgecam adds to TVM's untuned pipeline for CPU targets (x86_64, aarch64).

Untuned, TVM 0.27 lowers every fused kernel on a CPU as its naive loop nest: one thread, and for a
convolution the kernel-window reduction innermost (3 iterations), which LLVM cannot vectorize.
`ParallelRows` reorders a reduction kernel (conv, depthwise conv, dense) so that its outer output
loops run in parallel on TVM's thread pool, the reduction sits inside them and the last output loop
(a row of the output) is innermost, where consecutive elements are independent and LLVM vectorizes
them; the fused epilogue (bias, ReLU) runs per parallel chunk. Measured untuned at x86-64-v3, 2
threads, median of 5 calls on a 2-core znver3 that was busy with other work (so ±30%): bundled CNN
22.4 → 4.5 ms, MobileNetV2 209 → 68 ms, EfficientNet-Lite0 339 → 96 ms. Tuning (compiler/tuning.py)
still does far better; this is what a model gets before anyone tunes it.
"""

from __future__ import annotations

from typing import Any

MIN_ROW = 4  # an innermost row shorter than this gains nothing from vectorizing


def default_pipeline(target: Any) -> Any:
    """TVM's CPU pipeline (relax/backend/cpu_generic/pipeline.py) with ParallelRows scheduling what it
    takes before the build."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: Any, _context: Any) -> Any:
        with target:
            passes = pipeline.library_dispatch_passes(target) + pipeline.legalize_passes(target)
            passes += schedule_passes()
            passes += pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def schedule_passes() -> list[Any]:
    """The pass that applies ParallelRows to every kernel nothing scheduled before it."""
    from tvm.s_tir import dlight as dl

    return [dl.ApplyDefaultSchedule(ParallelRows())]


def _rule_base() -> type:
    from tvm.s_tir.dlight.base import ScheduleRule

    return ScheduleRule


class ParallelRows(_rule_base()):  # type: ignore[misc]
    """Kernels that are one reduction block (static extents, output rows ≥ MIN_ROW) followed by at
    most one elementwise block; any other kernel keeps TVM's unscheduled lowering."""

    def is_target_available(self, target: Any) -> bool:
        return bool(target.kind.name == "llvm")

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
        infos = try_inline(sch, infos)  # padding folds into the reduction's reads
        if not infos or not infos[0].is_reduction() or any(i.is_reduction() for i in infos[1:]):
            return None
        reduction, epilogue = infos[0], infos[1:]
        if len(epilogue) > 1 or (epilogue and not epilogue[0].is_injective()):
            return None
        kinds = reduction.dom_kind()
        if set(kinds) - {"S", "R"} or not all(isinstance(i.dom, int) for i in reduction.iters):
            return None
        rows = [i.dom for i in reduction.iters if i.kind == "S"]
        if len(rows) < 2 or rows[-1] < MIN_ROW:  # an outer loop to share out, a row to vectorize
            return None

        block = reduction.block_rv
        loops = sch.get_loops(block)
        spatial = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "S"]
        reduce = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "R"]
        sch.reorder(*spatial[:-1], *reduce, spatial[-1])
        outer = sch.fuse(*spatial[:-1])
        sch.parallel(outer)
        if epilogue:
            sch.reverse_compute_at(epilogue[0].block_rv, outer)
        sch.decompose_reduction(block, reduce[0])
        return sch
