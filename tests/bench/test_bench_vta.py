"""bench/bench_vta.py on one small conv: the model picks a tiling, the simulator's result is bit-exact
and its counts equal the model's, and the record's figures are consistent."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_vta_checks_the_model_against_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # the bench scripts import each other as top-level modules
    import bench_vta

    monkeypatch.setattr(bench_vta, "RESNET18", [("tiny.conv3x3", 8, 32, 32, 3, 1, 2)])
    result = bench_vta.run("pynq", candidates=4, functional=True)
    (row,) = result["rows"]
    assert row["gemm"] == {"m": 64, "k": 288, "n": 32, "shift": row["gemm"]["shift"]}
    assert row["simulator"]["bit_exact"] and row["counts_match"]
    assert row["simulator"]["distinct_outputs"] > 16  # outputs spread over int8, not saturated
    assert row["simulator"]["gemm_uops"] == 64 * 18 * 2
    assert 0 < row["utilization"] <= 1 and row["cycles"] <= row["serial_cycles"]
    assert result["total_ms"] == pytest.approx(2 * row["ms"])
