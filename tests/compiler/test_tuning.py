"""Tuning databases: the key a database is filed under, lookup (user root before the bundled one),
compile replaying a database (and saying so), `edgecam tune` with a budget that a rerun continues, and
tuning through TVM's RPC runner over loopback (how a remote ARM board is measured)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecam.compiler import tuning
from edgecam.compiler.artifact import load_artifact, sha256_file
from edgecam.compiler.build import compile_model
from edgecam.compiler.cli import app
from edgecam.compiler.errors import InvalidOptionError
from edgecam.compiler.targets import create_target
from edgecam.models import fashion_cnn


def x86(**options: object) -> object:
    return create_target("x86_64", **{"mcpu": "x86-64-v3", **options}).tvm_target()


def test_key_ignores_thread_count_but_not_the_cpu() -> None:
    assert tuning.target_key(x86(num_cores=2)) == tuning.target_key(x86(num_cores=8))
    assert tuning.target_key(x86()) != tuning.target_key(x86(mcpu="znver3"))
    assert tuning.target_key(x86()) != tuning.target_key(x86(mattr=["-fma"]))
    assert tuning.target_key(x86()).startswith("llvm-x86-64-v3-")


def test_lookup_prefers_the_users_database_and_skips_empty_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tuning.ENV_ROOT, str(tmp_path))
    sha = sha256_file(fashion_cnn.onnx_path())
    bundled = tuning.find_database(sha, x86())
    assert bundled is not None and bundled.is_relative_to(tuning.BUNDLED_ROOT)
    mine = tuning.database_dir(sha, x86(), tmp_path)
    mine.mkdir(parents=True)
    (mine / tuning.WORKLOADS).write_text("")
    (mine / tuning.RECORDS).write_text("")  # no records: not a database to replay
    assert tuning.find_database(sha, x86()) == bundled
    (mine / tuning.WORKLOADS).write_text((bundled / tuning.WORKLOADS).read_text())
    (mine / tuning.RECORDS).write_text((bundled / tuning.RECORDS).read_text())
    assert tuning.find_database(sha, x86()) == mine
    assert tuning.find_database("0" * 64, x86()) is None


def test_compile_replays_the_bundled_database_says_so_and_matches_onnxruntime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tuning.ENV_ROOT, str(tmp_path / "no-user-databases"))
    model = str(fashion_cnn.onnx_path())
    result = CliRunner().invoke(
        app, ["compile", model, "-t", "x86_64", "--mcpu", "x86-64-v3", "-o", str(tmp_path / "t")]
    )
    assert result.exit_code == 0, result.output
    tuned = load_artifact(tmp_path / "t")
    records = tuning.records_in(bundled_database())
    measured = tuned.manifest.measurements
    assert measured["tuning_records"] == records > 0
    # The shipped database keeps one record per task, for every task.
    assert measured["tuned_tasks"] == measured["tuning_tasks"] == records
    assert (
        f"tuned: schedules for {records} of {records} tasks replayed from a database of {records} records"
        in (" ".join(result.output.split()))
    )
    assert tuned.manifest.verification is not None and tuned.manifest.verification.max_abs_diff <= 1e-4
    untuned = compile_model(
        model, "x86_64", tmp_path / "u", target_options={"mcpu": "x86-64-v3"}, tuned=False
    )
    assert (
        untuned.manifest.measurements["tuning_records"] == untuned.manifest.measurements["tuned_tasks"] == 0
    )
    # Different schedules, so different code.
    assert tuned.library_path.read_bytes() != untuned.library_path.read_bytes()


def bundled_database() -> Path:
    database = tuning.database_dir(sha256_file(fashion_cnn.onnx_path()), x86(), tuning.BUNDLED_ROOT)
    assert tuning.records_in(database) > 0, "the bundled CNN ships a database for x86-64-v3"
    return database


def test_a_partial_database_replays_what_it_holds_and_the_rest_builds_with_default_schedules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a short `edgecam tune` leaves: records for some tasks only. The build still verifies."""
    monkeypatch.setenv(tuning.ENV_ROOT, str(tmp_path))
    model = fashion_cnn.onnx_path()
    partial = tuning.database_dir(sha256_file(model), x86(), tmp_path)
    partial.mkdir(parents=True)
    (partial / tuning.WORKLOADS).write_text((bundled_database() / tuning.WORKLOADS).read_text())
    every = (bundled_database() / tuning.RECORDS).read_text().splitlines()
    kept = [line for line in every if json.loads(line)[0] % 2 == 0]  # the even workloads' records
    (partial / tuning.RECORDS).write_text("".join(f"{line}\n" for line in kept))
    assert 0 < len(kept) < len(every)

    artifact = compile_model(model, "x86_64", tmp_path / "art", target_options={"mcpu": "x86-64-v3"})

    measured = artifact.manifest.measurements
    assert measured["tuning_records"] == measured["tuned_tasks"] == len(kept)
    assert measured["tuning_tasks"] == len(every)  # one record per task in the shipped database
    verification = artifact.manifest.verification
    assert verification is not None and verification.max_abs_diff <= 1e-4


def test_a_database_that_matches_no_task_is_reported(
    convnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The bundled CNN's records filed under another model: nothing matches, the build is untuned."""
    monkeypatch.setenv(tuning.ENV_ROOT, str(tmp_path))
    stale = tuning.database_dir(sha256_file(convnet), x86(), tmp_path)
    stale.mkdir(parents=True)
    (stale / tuning.WORKLOADS).write_text((bundled_database() / tuning.WORKLOADS).read_text())
    # Both models take a 1×28×28 image, so the kernel moving it to NHWC is the same workload in both:
    # leave its record out (the only one whose arguments include the image's shape).
    records = (bundled_database() / tuning.RECORDS).read_text().splitlines()
    (stale / tuning.RECORDS).write_text("".join(f"{r}\n" for r in records if "[1,1,28,28]" not in r))

    with caplog.at_level("WARNING", logger="edgecam.compiler.build"):
        artifact = compile_model(convnet, "x86_64", tmp_path / "art", target_options={"mcpu": "x86-64-v3"})

    measured = artifact.manifest.measurements
    assert measured["tuned_tasks"] == 0 and measured["tuning_tasks"] > 0
    assert "none of this build's" in caplog.text and "edgecam tune" in caplog.text


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="CUDA builds need nvcc")
def test_a_cuda_build_gives_kernels_the_database_lacks_the_default_gpu_schedules(
    convnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU kernel without a record must still get threads, or the build fails; here no kernel has one."""
    monkeypatch.setenv(tuning.ENV_ROOT, str(tmp_path))
    cuda = create_target("cuda", arch="sm_90").tvm_target()
    stale = tuning.database_dir(sha256_file(convnet), cuda, tmp_path)
    stale.mkdir(parents=True)
    for name in (tuning.WORKLOADS, tuning.RECORDS):
        (stale / name).write_text((bundled_database() / name).read_text())

    artifact = compile_model(convnet, "cuda", tmp_path / "art", target_options={"arch": "sm_90"})

    measured = artifact.manifest.measurements
    assert measured["tuning_records"] > 0  # the database was replayed ...
    assert measured["tuned_tasks"] == 0 and measured["tuning_tasks"] > 0  # ... and matched nothing
    assert artifact.manifest.target.device_code == "cubin sm_90"


def test_keep_best_keeps_each_workloads_fastest_record_in_a_smaller_file_that_still_matches(
    tmp_path: Path,
) -> None:
    from tvm.s_tir import meta_schedule as ms

    shipped = ms.database.JSONDatabase(work_dir=str(bundled_database()), allow_missing=False)
    # The database as `tune` leaves it: TVM's own (indented) workloads, several records per workload.
    native = ms.database.JSONDatabase(work_dir=str(tmp_path), allow_missing=True)
    for record in shipped.get_all_tuning_records():
        workload = native.commit_workload(record.workload.mod)
        for scale in (2.0, 0.5, 1e12):  # slower, faster, and a failed run (MetaSchedule's 1e10 s)
            secs = [min(float(s) * scale, 1e10) for s in record.run_secs]
            native.commit_tuning_record(
                ms.database.TuningRecord(record.trace, workload, secs, record.target, record.args_info)
            )
    count = len(shipped.get_all_tuning_records())
    written = (tmp_path / tuning.WORKLOADS).stat().st_size

    assert tuning.keep_best(tmp_path) == (3 * count, count)

    assert (tmp_path / tuning.WORKLOADS).stat().st_size < 0.7 * written
    kept = ms.database.JSONDatabase(work_dir=str(tmp_path), allow_missing=False)
    for record in shipped.get_all_tuning_records():  # a replay's lookup still finds every workload
        best = kept.query_tuning_record(record.workload.mod, record.target, "main")
        assert best is not None
        assert [float(s) for s in best.run_secs] == pytest.approx([float(s) / 2 for s in record.run_secs])


def test_a_new_user_database_starts_from_the_bundled_one(tmp_path: Path) -> None:
    sha = sha256_file(fashion_cnn.onnx_path())
    mine = tuning.database_dir(sha, x86(), tmp_path)
    assert tuning.seed_from_bundled(sha, x86(), mine) == tuning.records_in(bundled_database()) > 0
    assert tuning.seed_from_bundled(sha, x86(), mine) == 0  # never over a database that holds records
    assert tuning.seed_from_bundled(sha, x86(mcpu="znver3"), tmp_path / "other") == 0  # none shipped
    assert not (tmp_path / "other").exists()


def test_a_record_torn_by_a_kill_is_dropped_and_a_met_budget_measures_nothing(tmp_path: Path) -> None:
    from edgecam.compiler.frontends.onnx import load_onnx, to_relax

    database = tmp_path / "db"
    database.mkdir()
    (database / tuning.WORKLOADS).write_text((bundled_database() / tuning.WORKLOADS).read_text())
    complete = (bundled_database() / tuning.RECORDS).read_text()
    (database / tuning.RECORDS).write_text(complete + '[3,[[["GetSBlock",[],["ro')  # killed mid-append
    held = tuning.records_in(bundled_database())

    builder = create_target("x86_64", mcpu="x86-64-v3")  # tune what compile builds: the prepared module
    result = tuning.tune(builder.prepare(to_relax(load_onnx(fashion_cnn.onnx_path()))), x86(), database, held)

    assert (result.tasks, result.trials_before, result.trials_run) == (held, held, 0)
    assert (database / tuning.RECORDS).read_text() == complete


def test_tuning_measures_edgecams_own_schedules_first(convnet: Path, tmp_path: Path) -> None:
    """Each task edgecam's CPU rules take gets their schedule as a measured record before the search
    (compiler/tuning_defaults.py, which `tune` calls first): a replay can then never pick a slower
    schedule than the untuned build has; a rerun does not measure them again."""
    from tvm.s_tir import meta_schedule as ms

    from edgecam.compiler.frontends.onnx import load_onnx, to_relax
    from edgecam.compiler.tuning_defaults import default_schedule, seed_default_schedules

    mod = create_target("x86_64", mcpu="x86-64-v3").prepare(to_relax(load_onnx(convnet)))
    tasks = ms.relax_integration.extract_tasks(tuning.lower_for_tuning(mod, x86()), x86(), {})
    database = tmp_path / "db"
    database.mkdir()
    builder = ms.builder.LocalBuilder(f_build=tuning.build_candidate, max_workers=1)
    runner = ms.runner.Runner.create("local")

    seeded = seed_default_schedules(tasks, x86(), database, builder, runner)

    defaults = {t.task_name: default_schedule(t.dispatched[0], x86()) for t in tasks}
    assert seeded == sum(d is not None for d in defaults.values()) >= 2  # the conv and the dense layer
    records = ms.database.JSONDatabase(work_dir=str(database))
    for task in tasks:
        found = records.query_tuning_record(task.dispatched[0], x86(), task.task_name)
        if defaults[task.task_name] is None:
            assert found is None
            continue
        assert found is not None and str(found.trace) == str(defaults[task.task_name].trace)
        assert found.run_secs and min(float(t) for t in found.run_secs) > 0
    assert seed_default_schedules(tasks, x86(), database, builder, runner) == 0


def test_tune_refuses_a_budget_below_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="trials"):
        tuning.tune(object(), x86(), tmp_path / "db", 0)
    assert not (tmp_path / "db").exists()


def test_cli_tune_refuses_bad_input(tmp_path: Path) -> None:
    model = str(fashion_cnn.onnx_path())
    result = CliRunner().invoke(app, ["tune", model, "-t", "riscv", "--db", str(tmp_path)])
    assert result.exit_code == 2 and "valid targets" in result.output
    for trials in ("0", "-3"):
        result = CliRunner().invoke(app, ["tune", model, "-t", "x86_64", "--trials", trials])
        assert result.exit_code == 2 and "--trials" in result.output
    result = CliRunner().invoke(app, ["tune", str(tmp_path / "missing.onnx"), "-t", "x86_64"])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(app, ["tune", model, "-t", "x86_64", "--rpc-tracker", "h:1"])
    assert result.exit_code == 2 and "go together" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_tune_survives_ctrl_c_a_rerun_continues_and_compile_uses_the_database(
    convnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["tune", str(convnet), "-t", "x86_64", "--mcpu", "x86-64-v3", "--db", str(tmp_path)]
    database = tuning.database_dir(sha256_file(convnet), x86(), tmp_path)
    # Ctrl-C at a terminal: SIGINT to the whole process group, MetaSchedule's worker processes included.
    run = subprocess.Popen(
        [sys.executable, "-m", "edgecam", *args, "--trials", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not tuning.records_in(database) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        os.killpg(run.pid, signal.SIGINT)
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    held = tuning.records_in(database)
    assert run.returncode == 130 and f"keeps {held} trials" in " ".join(output.split()), output
    assert 0 < held < 500
    assert all(json.loads(line) for line in (database / tuning.RECORDS).read_text().splitlines())

    again = CliRunner().invoke(app, [*args, "--trials", str(held)])
    assert again.exit_code == 0 and f"holds {held} trials" in " ".join(again.output.split())
    assert tuning.records_in(database) == held  # budget met: nothing re-measured
    more = CliRunner().invoke(app, [*args, "--trials", str(held + 8)])
    assert more.exit_code == 0 and tuning.records_in(database) > held

    monkeypatch.setenv(tuning.ENV_ROOT, str(tmp_path))
    built = compile_model(convnet, "x86_64", tmp_path / "art", target_options={"mcpu": "x86-64-v3"})
    assert built.manifest.measurements["tuning_records"] == tuning.records_in(database)
    assert built.manifest.verification is not None and built.manifest.verification.max_abs_diff <= 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_tuning_through_an_rpc_tracker_on_loopback(convnet: Path, tmp_path: Path) -> None:
    """What tuning against a camera board does: a tracker, the board's RPC server registered under a key,
    MetaSchedule's RPC runner measuring there. Here the "board" is this host on 127.0.0.1."""
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=_free_port(), port_end=65000, silent=True)
    server = rpc.Server(
        host="127.0.0.1",
        port=_free_port(),
        port_end=65000,
        key="camera",
        tracker_addr=("127.0.0.1", tracker.port),
    )
    try:
        # In a process of its own, as a user runs it: run in-process after the Ctrl-C test's CliRunner
        # calls, it logged into their closed output streams and failed in the CLI.
        result = subprocess.run(
            [
                sys.executable, "-m", "edgecam", "tune", str(convnet), "-t", "x86_64", "--mcpu", "x86-64-v3",
                "--db", str(tmp_path), "--trials", "32",
                "--rpc-tracker", f"127.0.0.1:{tracker.port}", "--rpc-key", "camera",
            ],
            capture_output=True, text=True, timeout=280,
        )  # fmt: skip
    finally:
        server.terminate()
        tracker.terminate()
    assert result.returncode == 0, result.stdout + result.stderr
    database = tuning.database_dir(sha256_file(convnet), x86(), tmp_path)
    records = [json.loads(line) for line in (database / tuning.RECORDS).read_text().splitlines()]
    assert len(records) >= 16
    # A record whose run succeeded carries measured times: the RPC server really ran the candidates.
    assert any(record[1][1] and min(record[1][1]) < 1.0 for record in records)


def test_database_rewrites_go_through_tvm_and_replace_the_folder_whole(tmp_path: Path) -> None:
    """keep_best and seeding write through TVM's JSONDatabase into a staging folder that replaces the
    database by rename: nothing half-written is left, MetaSchedule's other files (logs/) move along."""
    from tvm.s_tir import meta_schedule as ms

    sha = sha256_file(fashion_cnn.onnx_path())
    mine = tuning.database_dir(sha, x86(), tmp_path / "root")
    assert tuning.seed_from_bundled(sha, x86(), mine) == tuning.records_in(bundled_database())
    (mine / "logs").mkdir()
    (mine / "logs" / "tuning.log").write_text("what tune_relax logged\n")
    # A second, slower record for every workload: keep_best drops it again.
    database = ms.database.JSONDatabase(work_dir=str(mine), allow_missing=False)
    for record in database.get_all_tuning_records():
        slower = [float(s) * 3 for s in record.run_secs]
        database.commit_tuning_record(
            ms.database.TuningRecord(record.trace, record.workload, slower, record.target, record.args_info)
        )
    held = tuning.records_in(bundled_database())
    assert tuning.keep_best(mine) == (2 * held, held)

    assert sorted(p.name for p in mine.parent.iterdir()) == [mine.name]  # no staging or old folder left
    assert (mine / "logs" / "tuning.log").read_text() == "what tune_relax logged\n"
    # Compacted as the bundled one is (the same workload lines, perhaps in another order).
    lines = sorted((mine / tuning.WORKLOADS).read_text().splitlines())
    assert lines == sorted((bundled_database() / tuning.WORKLOADS).read_text().splitlines())
    kept = ms.database.JSONDatabase(work_dir=str(mine), allow_missing=False)
    shipped = ms.database.JSONDatabase(work_dir=str(bundled_database()), allow_missing=False)
    for record in shipped.get_all_tuning_records():
        best = kept.query_tuning_record(record.workload.mod, record.target, "main")
        assert best is not None and [float(s) for s in best.run_secs] == [float(s) for s in record.run_secs]
