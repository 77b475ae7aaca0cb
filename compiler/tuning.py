"""MetaSchedule tuning with a persistent database per (model, target), which `compile_model` replays.

Untuned, TVM's default schedules run the bundled CNN ~80× slower than ONNX Runtime on a CPU; the
schedules MetaSchedule measures on the real machine close most of that gap, but take minutes to hours
to find. So they are kept: `tune` appends every measured trial to a JSON database in
`<root>/<model sha256[:16]>/<target key>/`, a rerun continues from what the database holds (an
interrupted run loses at most the batch being measured), and every later build of the same model for
the same target replays the database in seconds (`compile_model` looks it up itself).

Roots, first match wins: `$EDGECAM_TUNING_DIR` or ~/.cache/edgecam/tuning (what `edgecam tune` writes),
then the databases shipped for the bundled models (edgecam/models/tuning, read-only).

A database only applies to the exact import + pipeline that produced it (MetaSchedule matches
workloads by structural hash), so tuning and replay share `prepare` below and TVM's
`static_shape_tuning_pipeline`. Weights stay bound as constants; with `cpu_weight_prepack` the layout
the tuned kernels want is folded into them at build time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecam.compiler.errors import InvalidOptionError

log = logging.getLogger(__name__)

ENV_ROOT = "EDGECAM_TUNING_DIR"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
BUNDLED_ROOT = Path(__file__).resolve().parent.parent / "models" / "tuning"
TRIALS_PER_ITER = 32  # trials built and measured per batch: what an interrupt can lose
BUILD_TIMEOUT_S = 60.0

OnProgress = Callable[[int, int, float], None]  # (trials measured, trials planned, seconds so far)


def user_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or Path.home() / ".cache" / "edgecam" / "tuning")


def target_key(target: Any) -> str:
    """A directory name for what makes tuned schedules valid: kind, triple, CPU and features, arch.

    The thread count (`num-cores`) is left out: it shapes which schedule is fastest, not whether it
    runs, so a camera with other core counts still benefits. Everything else must match exactly.
    """
    from edgecam.compiler.targets.base import plain

    spec = plain(target.export())
    spec.pop("num-cores", None)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cpu = spec.get("mcpu") or spec.get("arch") or "generic"
    return f"{spec.get('kind', 'target')}-{cpu}-{digest}"


def database_dir(model_sha256: str, target: Any, root: Path | None = None) -> Path:
    return (root or user_root()) / model_sha256[:16] / target_key(target)


def records_in(database: Path) -> int:
    """Tuning records (measured trials) a database holds; 0 when it does not exist."""
    path = database / RECORDS
    if not path.is_file():
        return 0
    with path.open() as lines:
        return sum(1 for line in lines if line.strip())


def find_database(model_sha256: str, target: Any) -> Path | None:
    """The database to replay for this model and target: the user's, else a bundled one, else None."""
    for root in (user_root(), BUNDLED_ROOT):
        candidate = database_dir(model_sha256, target, root)
        if (candidate / WORKLOADS).is_file() and records_in(candidate) > 0:
            return candidate
    return None


def prepare(mod: Any, target: Any, prepack: bool = True) -> Any:
    """The module MetaSchedule extracts tasks from: what `static_shape_tuning_pipeline` runs before
    tuning (so the workloads it later looks up are these very ones)."""
    import tvm
    from tvm import relax

    passes = [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.pipeline.zero_pipeline(),
    ]
    if prepack:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with target:
        return tvm.transform.Sequential(passes)(mod)


def replay_pipeline(target: Any, database: Path, prepack: bool = True) -> Any:
    """The Relax pipeline that builds with the database's best schedules and tunes nothing."""
    from tvm import relax

    return relax.pipeline.static_shape_tuning_pipeline(
        total_trials=0, target=target, work_dir=str(database), cpu_weight_prepack=prepack
    )


@dataclass
class TuneResult:
    database: Path
    tasks: int
    trials_before: int
    trials_run: int
    seconds: float


def tune(
    mod: Any,
    target: Any,
    database: Path,
    trials: int,
    trials_per_task: int | None = None,
    runner: Any = "local",
    on_progress: OnProgress = lambda done, planned, seconds: None,
    seed: int | None = None,
) -> TuneResult:
    """Tune `mod` (a Relax module with bound weights) for `target` until the database holds `trials`
    trials in all, measuring with `runner` ("local", or a MetaSchedule RPCRunner for a remote board)."""
    from tvm.s_tir import meta_schedule as ms

    if trials < 1:
        raise InvalidOptionError(f"trials must be >= 1, got {trials}")
    database.mkdir(parents=True, exist_ok=True)
    prepared = prepare(mod, target)
    tasks = ms.relax_integration.extract_tasks(prepared, target, {})
    before = records_in(database)
    remaining = trials - before
    if remaining <= 0:
        log.info("%s already holds %d trials (budget %d): nothing to tune", database, before, trials)
        return TuneResult(database, len(tasks), before, 0, 0.0)
    progress = _Progress(remaining, on_progress)
    builder = ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=BUILD_TIMEOUT_S)
    ms.relax_integration.tune_relax(
        prepared,
        {},
        target,
        str(database),
        max_trials_global=remaining,
        max_trials_per_task=trials_per_task,
        num_trials_per_iter=TRIALS_PER_ITER,
        builder=builder,
        runner=runner,
        measure_callbacks=[*ms.MeasureCallback.create("default"), progress.callback()],
        seed=seed,
    )
    return TuneResult(database, len(tasks), before, records_in(database) - before, progress.seconds())


def build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default candidate build without its `import tvm.s_tir.tensor_intrin`: that import
    parses every tensor intrinsic TVM has and takes ~43 s here, in every builder process of every
    batch (the pool restarts per batch), so with the default 30 s timeout every build failed. A
    candidate that uses a tensor intrinsic (e.g. VNNI) fails to build and is skipped."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


class _Progress:
    """Counts measured trials for the progress line; MetaSchedule calls `apply` after each batch."""

    def __init__(self, planned: int, report: OnProgress) -> None:
        self.planned, self.report, self.done = planned, report, 0
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def callback(self) -> Any:
        from tvm.ir.utils import derived_object
        from tvm.s_tir import meta_schedule as ms

        progress = self

        @derived_object
        class ProgressCallback(ms.measure_callback.PyMeasureCallback):
            def apply(
                self, task_scheduler: Any, task_id: int, candidates: Any, builds: Any, runs: Any
            ) -> None:
                progress.done += len(runs)
                progress.report(progress.done, progress.planned, progress.seconds())

        return ProgressCallback()


def eta_seconds(done: int, planned: int, seconds: float) -> float | None:
    """Seconds left at the rate so far (None before the first batch)."""
    return seconds / done * (planned - done) if done else None


def rpc_runner(tracker: str, key: str, session_timeout_s: int = 60) -> Any:
    """A MetaSchedule runner that measures on the board registered with an RPC tracker as `key`."""
    from tvm.s_tir import meta_schedule as ms

    host, _, port = tracker.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidOptionError(f"RPC tracker must be HOST:PORT, got {tracker!r}")
    config = ms.runner.RPCConfig(
        tracker_host=host, tracker_port=int(port), tracker_key=key, session_timeout_sec=session_timeout_s
    )
    return ms.runner.RPCRunner(rpc_config=config)
