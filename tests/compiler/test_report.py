"""The report: the table holds every step and its ratios, JSON round-trips, the PNG is drawn (also
without labels or TVM numbers), and `edgecam report MODEL --recipe` measures without an artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from edgecam.cli import app
from edgecam.compiler.evaluate import Latency, Measurement, MeasureOptions
from edgecam.compiler.report import GateResult, Report, load_report, table, write_json, write_plot
from edgecam.models.fashion_cnn import onnx_path


def _step(name: str, scale: float, top1: float | None, tvm: bool = True) -> Measurement:
    return Measurement(
        step=name,
        params=int(100_000 * scale),
        bytes=int(400_000 * scale),
        weight_bytes=int(390_000 * scale),
        macs=int(20e6 * scale),
        flops=int(40e6 * scale),
        top1=top1,
        agreement=1.0 if scale == 1 else 0.97,
        ort=Latency(p50_ms=0.5 * scale, p99_ms=0.9 * scale, runs=10, threads=2),
        tvm=Latency(p50_ms=20.0 * scale, p99_ms=24.0 * scale, runs=10, threads=2) if tvm else None,
        tvm_skipped=None if tvm else "this x86_64 host cannot run aarch64 code",
        changes={"sparsity": 0.5} if scale != 1 else {},
    )


def _report(labelled: bool = True, tvm: bool = True) -> Report:
    steps = [
        _step("original", 1.0, 0.93 if labelled else None, tvm),
        _step("1. prune", 0.5, 0.92 if labelled else None, tvm),
    ]
    gate = GateResult(
        metric="top1" if labelled else "agreement",
        original=0.93 if labelled else 1.0,
        final=0.92 if labelled else 0.97,
        drop_pp=1.0 if labelled else 3.0,
        allowed_pp=1.0,
        passed=labelled,
    )
    return Report(
        model="cnn",
        target="x86_64",
        evaluation_samples=200,
        labelled=labelled,
        options=MeasureOptions(runs=10),
        recipe={"passes": [{"kind": "prune"}]},
        steps=steps,
        gate=gate,
    )


def _text(report: Report) -> str:
    console = Console(width=200, record=True)
    console.print(table(report))
    return console.export_text()


def test_the_table_shows_every_step_with_its_numbers_and_ratios() -> None:
    text = _text(_report())
    original, pruned = (
        next(line for line in text.splitlines() if name in line) for name in ("original", "prune")
    )
    assert "100.00k" in original and "20.00M" in original and "93.00" in original
    # Half the size, MACs and latency of the original: every ratio column says 0.50.
    assert "50.00k" in pruned and "0.25/0.45" in pruned and "10/12" in pruned and pruned.count("0.50") == 4
    assert "accuracy gate passed: top-1 93.00% → 92.00% (drop 1.00 pp, allowed 1.00 pp)" in text
    assert "TVM untuned" in text


def test_the_table_says_why_tvm_is_missing_and_when_the_gate_failed() -> None:
    text = _text(_report(labelled=False, tvm=False))
    assert "skipped" in text and "TVM skipped: this x86_64 host cannot run aarch64 code" in text
    assert "accuracy gate FAILED: agreement with the original 100.00% → 97.00%" in text


def test_json_round_trips_and_the_summary_has_original_final_and_gate(tmp_path: Path) -> None:
    report = _report()
    assert load_report(write_json(report, tmp_path / "r.json")) == report
    summary = report.summary()
    assert summary["steps"] == ["original", "1. prune"] and summary["gate"]["passed"] is True
    assert summary["final"]["bytes"] == 200_000 and "changes" not in summary["final"]
    json.dumps(summary)  # goes into the manifest


@pytest.mark.parametrize(("labelled", "tvm"), [(True, True), (False, False)])
def test_the_plot_is_a_png(tmp_path: Path, labelled: bool, tvm: bool) -> None:
    path = write_plot(_report(labelled, tvm), tmp_path / "r.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cli_report_measures_a_model_with_a_recipe_and_writes_no_artifact(tmp_path: Path) -> None:
    samples = onnx_path().parent / "samples.npz"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "max_accuracy_drop": 0.0,
                "evaluation": {"kind": "npz", "path": str(samples), "limit": 100},
                "passes": [{"kind": "prune", "sparsity": 0.9, "scope": "global"}],
            }
        )
    )
    args = ["report", str(onnx_path()), "--recipe", str(recipe), "--runs", "2", "--no-tvm-latency"]
    result = CliRunner().invoke(
        app, [*args, "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]
    )
    assert result.exit_code == 0, result.output  # a failed gate is shown, not an error: nothing is written
    assert "1. prune" in result.output and "accuracy gate FAILED" in result.output
    report = load_report(tmp_path / "r.json")
    assert [step.step for step in report.steps] == ["original", "1. prune"]
    assert report.steps[1].changes["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert report.steps[1].tvm_skipped and (tmp_path / "r.png").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.png", "recipe.yaml"]


def test_cli_report_on_a_model_needs_a_recipe(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(onnx_path())])
    assert result.exit_code == 2 and "pass --recipe" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json does not exist" in result.output
