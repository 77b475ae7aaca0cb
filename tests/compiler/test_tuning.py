"""Tuning databases: the key a database is filed under, lookup (user root before the bundled one),
compile replaying a database (and saying so), `edgecam tune` with a budget that a rerun continues, and
tuning through TVM's RPC runner over loopback (how a remote ARM board is measured)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecam.compiler import tuning
from edgecam.compiler.artifact import sha256_file
from edgecam.compiler.build import compile_model
from edgecam.compiler.cli import app
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


def test_compile_replays_the_bundled_database_and_matches_onnxruntime(tmp_path: Path) -> None:
    tuned = compile_model(
        fashion_cnn.onnx_path(), "x86_64", tmp_path / "t", target_options={"mcpu": "x86-64-v3"}
    )
    records = tuning.records_in(tuning.find_database(sha256_file(fashion_cnn.onnx_path()), x86()))
    assert tuned.manifest.measurements["tuning_records"] == records > 0
    assert tuned.manifest.verification is not None and tuned.manifest.verification.max_abs_diff <= 1e-4
    untuned = compile_model(
        fashion_cnn.onnx_path(), "x86_64", tmp_path / "u", target_options={"mcpu": "x86-64-v3"}, tuned=False
    )
    assert untuned.manifest.measurements["tuning_records"] == 0
    # Different schedules, so different code.
    assert tuned.library_path.read_bytes() != untuned.library_path.read_bytes()


def test_cli_tune_refuses_bad_input(tmp_path: Path) -> None:
    model = str(fashion_cnn.onnx_path())
    result = CliRunner().invoke(app, ["tune", model, "-t", "riscv", "--db", str(tmp_path)])
    assert result.exit_code == 2 and "valid targets" in result.output
    result = CliRunner().invoke(app, ["tune", model, "-t", "x86_64", "--trials", "0"])
    assert result.exit_code == 2 and "--trials" in result.output
    result = CliRunner().invoke(app, ["tune", model, "-t", "x86_64", "--rpc-tracker", "h:1"])
    assert result.exit_code == 2 and "go together" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_tune_writes_a_database_that_a_rerun_continues_and_compile_uses(
    convnet: Path, tmp_path: Path
) -> None:
    args = ["tune", str(convnet), "-t", "x86_64", "--mcpu", "x86-64-v3", "--db", str(tmp_path)]
    first = CliRunner().invoke(app, [*args, "--trials", "40"])
    assert first.exit_code == 0, first.output
    database = tuning.database_dir(sha256_file(convnet), x86(), tmp_path)
    held = tuning.records_in(database)
    assert held >= 32 and json.loads((database / tuning.RECORDS).read_text().splitlines()[0])
    again = CliRunner().invoke(app, [*args, "--trials", str(held)])
    assert again.exit_code == 0 and tuning.records_in(database) == held  # budget met: nothing re-measured
    more = CliRunner().invoke(app, [*args, "--trials", str(held + 32)])
    assert more.exit_code == 0 and tuning.records_in(database) > held

    import os

    os.environ[tuning.ENV_ROOT] = str(tmp_path)
    try:
        built = compile_model(convnet, "x86_64", tmp_path / "art", target_options={"mcpu": "x86-64-v3"})
    finally:
        del os.environ[tuning.ENV_ROOT]
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
        result = CliRunner().invoke(
            app,
            [
                "tune", str(convnet), "-t", "x86_64", "--mcpu", "x86-64-v3", "--db", str(tmp_path),
                "--trials", "32", "--rpc-tracker", f"127.0.0.1:{tracker.port}", "--rpc-key", "camera",
            ],
        )  # fmt: skip
    finally:
        server.terminate()
        tracker.terminate()
    assert result.exit_code == 0, result.output
    database = tuning.database_dir(sha256_file(convnet), x86(), tmp_path)
    records = [json.loads(line) for line in (database / tuning.RECORDS).read_text().splitlines()]
    assert len(records) >= 16
    # A record whose run succeeded carries measured times: the RPC server really ran the candidates.
    assert any(record[1][1] and min(record[1][1]) < 1.0 for record in records)
