"""edgecam's untuned CPU schedules as the first measured record of every tuning task.

MetaSchedule searches from random schedules and keeps what it measures. After hundreds of trials its
best can still be slower than the schedule edgecam gives a kernel without tuning (bundled CNN,
znver3, 609 trials: tuned 0.53-0.63 ms, untuned 0.41-0.50 ms at 2 threads), and a database that
replays it makes `compile` slower than no database. So `tune` first measures edgecam's own schedule
of each task with the same builder and runner and commits it as a record: a replay takes whichever is
faster, and the evolutionary search starts from it (it samples part of each population from the
database's best records).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def seed_default_schedules(tasks: list[Any], target: Any, database: Path, builder: Any, runner: Any) -> int:
    """Measure and commit edgecam's default schedule of every task of `tasks` (MetaSchedule
    ExtractedTasks) that `database` has no workload for yet; returns how many were committed. Only
    CPU (LLVM) targets have edgecam schedules; tasks none of its rules takes are left to the search."""
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name != "llvm":
        return 0
    db = ms.database.JSONDatabase(work_dir=str(database))
    candidates = []
    for task in tasks:
        workload = task.dispatched[0]
        if db.has_workload(workload):  # seeded (or tuned) by an earlier run
            continue
        schedule = default_schedule(workload, target)
        if schedule is not None:
            candidates.append((workload, schedule))
    if not candidates:
        return 0
    built = builder.build([ms.builder.BuilderInput(s.mod, target) for _, s in candidates])
    measured = []
    for (workload, schedule), result in zip(candidates, built, strict=True):
        if result.error_msg:
            log.warning("edgecam's schedule of a tuning task did not build: %s", result.error_msg)
            continue
        args = ms.arg_info.ArgInfo.from_prim_func(workload["main"])
        measured.append((workload, schedule, args, ms.runner.RunnerInput(result.artifact_path, "cpu", args)))
    futures = runner.run([m[3] for m in measured])
    committed = 0
    for (workload, schedule, args, _), future in zip(measured, futures, strict=True):
        result = future.result()
        if result.error_msg or not result.run_secs:
            log.warning("edgecam's schedule of a tuning task did not run: %s", result.error_msg)
            continue
        workload_entry = db.commit_workload(workload)
        db.commit_tuning_record(
            ms.database.TuningRecord(schedule.trace, workload_entry, result.run_secs, target, args)
        )
        committed += 1
    return committed


def default_schedule(workload: Any, target: Any) -> Any:
    """The schedule edgecam's untuned build gives this task's function (the first of its CPU rules
    that takes it), or None."""
    from edgecam.compiler.targets.cpu_schedules import schedule_rules

    func = workload["main"]
    with target:
        for rule in schedule_rules():
            schedule = rule.apply(func, target, False)
            if schedule is not None:
                return schedule
    return None
