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
workloads by structural hash), so tuning and replay share `lower_for_tuning` below and TVM's
`static_shape_tuning_pipeline`. A task the database holds no record for keeps the untuned schedule
(the replay still builds; `tuned_tasks` says how many were replayed). Weights stay bound as
constants; with `cpu_weight_prepack` the layout the tuned kernels want is folded into them at build time.
On CPUs the first record of every task is edgecam's own untuned schedule, measured like any trial
(compiler/tuning_defaults.py), so a replay is never slower than the untuned build.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecam.compiler.artifact import replace_directory
from edgecam.compiler.errors import InvalidOptionError
from edgecam.compiler.tuning_defaults import seed_default_schedules

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

    The directory is the only thing that keeps targets apart: a JSONDatabase records each trial's
    target but answers a query by workload structural hash alone (TVM 0.27: a database tuned for
    x86-64-v3 hands its schedules to a znver3, aarch64 or even cuda build of the same workload). The
    build's target still decides the instructions, so a schedule tuned for another CPU never emits
    ones the camera lacks, but it was chosen for other vector widths and caches (an AVX-512 tiling on
    an AVX2 camera) and one that tensorizes (VNNI, NEON dot) fails to build elsewhere. So kind, triple,
    mcpu and mattr must all match; `num-cores` is left out: it shapes which schedule is fastest, not
    what is valid, and cameras of one model run with different thread counts.
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


def seed_from_bundled(model_sha256: str, target: Any, database: Path) -> int:
    """Start an empty `database` from the bundled one for this model and target, if any; returns the
    records copied. Without it a short `edgecam tune` of a bundled model would write a user database
    worse than the shipped one, which `find_database` would then prefer; seeded, the search starts
    from the shipped schedules (MetaSchedule samples part of each population from the database)."""
    bundled = database_dir(model_sha256, target, BUNDLED_ROOT)
    if records_in(database) or not records_in(bundled) or database.resolve() == bundled.resolve():
        return 0
    _rewrite(database, _open(bundled).get_all_tuning_records())
    return records_in(database)


def keep_best(database: Path) -> tuple[int, int]:
    """Rewrite `database` with only each workload's fastest record, which is all a replay reads, and
    its workloads serialized without indentation: what is committed for the bundled models (~15×
    smaller). Returns (records before, records after). Resuming from it re-learns the cost model."""
    from tvm_ffi import structural_hash

    records = _open(database).get_all_tuning_records()
    best: dict[int, Any] = {}
    for record in records:
        # MetaSchedule marks failed runs with 1e10 s (or none); they never win a replay either.
        secs = [float(s) for s in record.run_secs or ()]
        if not secs or max(secs) >= 1e9:
            continue
        key = structural_hash(record.workload.mod)
        if key not in best or _mean(secs) < _mean([float(s) for s in best[key].run_secs]):
            best[key] = record
    kept = _rewrite(database, list(best.values()))
    return len(records), kept


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _open(database: Path) -> Any:
    """The JSONDatabase in `database` (both files must exist)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(
        path_workload=str(database / WORKLOADS),
        path_tuning_record=str(database / RECORDS),
        allow_missing=False,
    )


def _rewrite(database: Path, records: Sequence[Any]) -> int:
    """Make `database` hold exactly `records`, written by TVM's JSONDatabase into a staging folder
    beside it (workloads then compacted), which replaces `database` by rename: a reader (a compile, a
    replay) never sees new workloads with old records, whose indices would point at the wrong ones.
    Other files in `database` (MetaSchedule's logs/) move along. Returns the records written."""
    from tvm.s_tir import meta_schedule as ms

    database.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{database.name}.", dir=database.parent))
    try:
        written = ms.database.JSONDatabase(
            path_workload=str(staging / WORKLOADS),
            path_tuning_record=str(staging / RECORDS),
            allow_missing=True,
        )
        for record in records:
            workload = written.commit_workload(record.workload.mod)
            written.commit_tuning_record(
                ms.database.TuningRecord(
                    record.trace, workload, record.run_secs, record.target, record.args_info
                )
            )
        lines = (staging / WORKLOADS).read_text().splitlines()
        _atomic_write(staging / WORKLOADS, "".join(f"{_compact_workload(line)}\n" for line in lines))
        if database.is_dir():
            for entry in database.iterdir():
                if entry.name not in (WORKLOADS, RECORDS):
                    os.replace(entry, staging / entry.name)
        replace_directory(staging, database)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(records)


def _atomic_write(path: Path, text: str) -> None:
    """`path` holds `text` or what it held before, never part of it (a kill mid-write)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _compact_workload(line: str) -> str:
    """A workload line, [structural hash, base64(8-byte little-endian length + IR JSON)], with the IR
    JSON re-serialized without TVM's indentation (half the size; it loads to the same module)."""
    shash, encoded = json.loads(line)
    raw = base64.b64decode(encoded)
    (length,) = struct.unpack("<Q", raw[:8])
    if length != len(raw) - 8:  # not the layout this was written for: keep it as TVM wrote it
        return line
    ir = json.dumps(json.loads(raw[8:]), separators=(",", ":")).encode()
    packed = base64.b64encode(struct.pack("<Q", len(ir)) + ir).decode()
    return json.dumps([shash, packed], separators=(",", ":"))


def lower_for_tuning(mod: Any, target: Any, prepack: bool = True) -> Any:
    """`mod` lowered to the TIR functions MetaSchedule extracts tasks from: the passes
    `static_shape_tuning_pipeline` runs before tuning (so the workloads it later looks up are these
    very ones)."""
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


def replay_pipeline(
    target: Any, database: Path, prepack: bool = True, schedule_rest: Sequence[Any] = ()
) -> Any:
    """The Relax pipeline that builds with the database's best schedules and tunes nothing: TVM's
    tuning pipeline with no trials (fuse, apply the database, fold the weight layouts), then
    `schedule_rest` for the kernels the database has no record of (a GPU kernel must be given its
    threads; a CPU one builds unscheduled), then the lowering `tvm.compile` runs by default (the
    tuning pipeline stops at scheduled TIR calls)."""
    import tvm
    from tvm import relax

    tuned = relax.pipeline.static_shape_tuning_pipeline(
        total_trials=0, target=target, work_dir=str(database), cpu_weight_prepack=prepack
    )
    return tvm.transform.Sequential([tuned, *schedule_rest, relax.pipeline.default_build_pipeline()])


def tuned_tasks(mod: Any, target: Any, database: Path) -> tuple[int, int]:
    """(tasks of `mod` that `database` holds a schedule for, all of its tasks): how much of a build
    `replay_pipeline` schedules from the database; the rest keep TVM's default schedules. `mod` is
    the module the build compiles (after `Target.prepare`). 0 of N: a stale database (one made from
    another import or pipeline), whose records match nothing."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(lower_for_tuning(mod, target), target, {})
    records = ms.database.JSONDatabase(work_dir=str(database), allow_missing=False)
    tuned = sum(
        records.query_tuning_record(task.dispatched[0], target, task.task_name) is not None for task in tasks
    )
    return tuned, len(tasks)


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
    _drop_torn_record(database)
    lowered = lower_for_tuning(mod, target)
    tasks = ms.relax_integration.extract_tasks(lowered, target, {})
    before = records_in(database)
    remaining = trials - before
    if remaining <= 0:
        log.info("%s already holds %d trials (budget %d): nothing to tune", database, before, trials)
        return TuneResult(database, len(tasks), before, 0, 0.0)
    progress = _Progress(remaining, on_progress)
    builder = ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=BUILD_TIMEOUT_S)
    with _noting_interrupts() as interrupted, _runner_threads(target):
        progress.stop = interrupted
        runner = ms.runner.Runner.create(runner) if isinstance(runner, str) else runner
        seeded = seed_default_schedules(tasks, target, database, builder, runner)
        log.info("measured edgecam's untuned schedules of %d tasks first", seeded)
        try:
            ms.relax_integration.tune_relax(
                lowered,
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
        except BaseException:
            if interrupted.is_set():
                raise TuningInterrupted(database, records_in(database)) from None
            raise
    return TuneResult(database, len(tasks), before, records_in(database) - before, progress.seconds())


class TuningInterrupted(Exception):
    """Ctrl-C during `tune`. Every measured batch is already in the database; a rerun continues."""

    def __init__(self, database: Path, records: int) -> None:
        super().__init__(
            f"interrupted: {database} keeps {records} trials; rerun the same command to continue"
        )
        self.database, self.records = database, records


@contextmanager
def _noting_interrupts() -> Iterator[threading.Event]:
    """Ctrl-C still stops tuning at once, but its KeyboardInterrupt comes back out of MetaSchedule's
    C++ loop as a bare RuntimeError; the event tells `tune` that it was the user, not a failure.
    Left alone where SIGINT is not Python's default (ignored, or an embedding application's)."""
    interrupted = threading.Event()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield interrupted
        return

    def note(signum: int, frame: Any) -> None:
        interrupted.set()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _drop_torn_record(database: Path) -> None:
    """A run killed while appending leaves half a line, which would make the whole database unreadable."""
    path = database / RECORDS
    if not path.is_file():
        return
    data = path.read_text()
    if data and not data.endswith("\n"):
        _atomic_write(path, data[: data.rfind("\n") + 1])


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
        # Set on Ctrl-C: stop after this batch even if MetaSchedule swallowed the interrupt somewhere.
        self.stop = threading.Event()

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
                if progress.stop.is_set():
                    raise KeyboardInterrupt

        return ProgressCallback()


def eta_seconds(done: int, planned: int, seconds: float) -> float | None:
    """Seconds left at the rate so far (None before the first batch)."""
    return seconds / done * (planned - done) if done else None


@contextmanager
def _runner_threads(target: Any) -> Iterator[None]:
    """Local runner processes (which inherit this environment) time candidates with one thread per
    core of the target, as the camera runs them (edgecam/tvm_threads.py): with TVM's own default,
    half the CPUs on x86, a 2-core host would tune single-threaded kernels."""
    from edgecam import tvm_threads

    previous = os.environ.get(tvm_threads.VARIABLE)
    cores = int(target.attrs.get("num-cores", 0) or 0)
    os.environ[tvm_threads.VARIABLE] = str(cores or tvm_threads.physical_cores())
    try:
        yield
    finally:
        if previous is None:
            del os.environ[tvm_threads.VARIABLE]
        else:
            os.environ[tvm_threads.VARIABLE] = previous


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
