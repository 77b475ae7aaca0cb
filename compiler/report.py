"""The trade-off report of a recipe run: one row per step, as a rich table, JSON and a PNG plot.

The JSON (`Report`) is what an artifact stores as report.json; the table and the plot are drawn
from it, so `edgecam report ARTIFACT` shows exactly what was measured when it was compressed.
"""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from edgecam.compiler.artifact_figures import ArtifactFigures
from edgecam.compiler.errors import CompilerError
from edgecam.compiler.evaluate import Latency, Measurement, MeasureOptions

if TYPE_CHECKING:
    from rich.table import Table

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"


class GateResult(BaseModel):
    """The accuracy gate: the original's metric against the final model's, in percentage points."""

    metric: Literal["top1", "agreement"]
    original: float  # 0-1
    final: float  # 0-1
    drop_pp: float
    allowed_pp: float
    passed: bool


class Report(BaseModel):
    model: str
    target: str
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    host: str = Field(default_factory=lambda: f"{platform.machine()} {platform.processor()}".strip())
    evaluation_samples: int
    labelled: bool
    options: MeasureOptions
    recipe: dict[str, Any]
    steps: list[Measurement] = Field(min_length=1)
    gate: GateResult
    # The compiled artifact (`compress` only; None in `report MODEL` and in reports of older edgecam).
    artifact: ArtifactFigures | None = None

    def summary(self) -> dict[str, Any]:
        """What the manifest keeps: the original and final rows (without pass details) and the gate."""
        exclude = {"changes"}
        return {
            "report": REPORT_JSON,
            "plot": REPORT_PNG,
            "steps": [step.step for step in self.steps],
            "original": self.steps[0].model_dump(mode="json", exclude=exclude),
            "final": self.steps[-1].model_dump(mode="json", exclude=exclude),
            "gate": self.gate.model_dump(mode="json"),
            "evaluation_samples": self.evaluation_samples,
            "artifact": self.artifact.model_dump(mode="json") if self.artifact else None,
        }


def load_report(path: Path) -> Report:
    path = Path(path)
    try:
        return Report.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        raise CompilerError(f"{path} is not a readable edgecam report: {exc}") from exc


def write_json(report: Report, path: Path) -> Path:
    Path(path).write_text(report.model_dump_json(indent=2) + "\n")
    return Path(path)


# --- terminal table ----------------------------------------------------------------------------


def _count(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.2f}{suffix}"
    return f"{value:.0f}"


def _kib(value: float) -> str:
    return f"{value / 1024:.1f}"


def _latency(latency: Latency | None, skipped: str | None = None) -> str:
    if latency is None:
        return "—" if skipped is None else "skipped"
    return f"{latency.p50_ms:.3g}/{latency.p99_ms:.3g}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}"


def _ratio(value: float | None, base: float | None) -> str:
    return "—" if value is None or not base else f"{value / base:.2f}"


def _ratios(step: Measurement, first: Measurement) -> list[str]:
    """Step / original for size, MACs and both latencies' p50 (below 1: smaller or faster)."""
    return [
        _ratio(step.bytes, first.bytes),
        _ratio(step.macs, first.macs),
        _ratio(_p50(step.ort), _p50(first.ort)),
        _ratio(_p50(step.tvm), _p50(first.tvm)),
    ]


def _p50(latency: Latency | None) -> float | None:
    return None if latency is None else latency.p50_ms


_COLUMNS = (
    "step", "params", "KiB", "weight KiB", "MACs", "ORT ms p50/p99", "TVM ms p50/p99", "top-1 %",
    "agree %", "size ×", "MACs ×", "ORT ×", "TVM ×",
)  # fmt: skip


def table(report: Report) -> Table:
    """One row per step; the × columns are step / original. The caption holds the gate verdict and
    how latency was measured."""
    from rich.table import Table

    title = f"{report.model} → {report.target}: {len(report.steps) - 1} pass(es)"
    out = Table(title=title, caption=_caption(report), caption_justify="left")
    for header in _COLUMNS:
        out.add_column(header, justify="left" if header == "step" else "right", no_wrap=header == "step")
    first = report.steps[0]
    for step in report.steps:
        out.add_row(
            step.step,
            _count(step.params),
            _kib(step.bytes),
            _kib(step.weight_bytes),
            _count(step.macs),
            _latency(step.ort),
            _latency(step.tvm, step.tvm_skipped),
            _percent(step.top1),
            _percent(step.agreement),
            *_ratios(step, first),
        )
    return out


def _caption(report: Report) -> str:
    gate = report.gate
    name = "top-1" if gate.metric == "top1" else "agreement with the original"
    verdict = "passed" if gate.passed else "FAILED"
    lines = [
        f"accuracy gate {verdict}: {name} {gate.original * 100:.2f}% → {gate.final * 100:.2f}% "
        f"(drop {gate.drop_pp:.2f} pp, allowed {gate.allowed_pp:.2f} pp) "
        f"on {report.evaluation_samples} inputs",
        f"latency: batch 1, {report.options.runs} runs after {report.options.warmup} warm-up, "
        f"{report.options.threads} threads; TVM untuned (no MetaSchedule) on {report.host}",
    ]
    skipped = {step.tvm_skipped for step in report.steps if step.tvm_skipped}
    lines += [f"TVM skipped: {reason}" for reason in sorted(skipped)]
    if report.artifact is not None:
        lines += _artifact_lines(report.artifact, report.steps[0])
    return "\n".join(lines)


def _artifact_lines(figures: ArtifactFigures, original: Measurement) -> list[str]:
    """The compiled artifact beside the final row: bytes on disk against weight bytes, and latency."""
    parts = " + ".join(f"{name} {_kib(size)} KiB" for name, size in figures.files.items())
    tuned = (
        f"tuned schedules for {figures.tuned_tasks} of {figures.tuning_tasks} tasks"
        if figures.tuned_tasks
        else "untuned"
    )
    if figures.latency is not None:
        timing = f"{tuned}, {figures.threads} threads"
        speed = f"compiled latency p50/p99 {_latency(figures.latency)} ms ({timing})"
    else:
        speed = f"compiled latency skipped: {figures.latency_skipped}"
    return [
        f"artifact on disk: {parts}",
        f"artifact to run (library + coded weights): {_kib(figures.run_bytes)} KiB, "
        f"{original.weight_bytes / figures.run_bytes:.2f}× smaller than the original's weights "
        f"(final weights alone: {_kib(figures.weight_bytes)} KiB, "
        f"{original.weight_bytes / figures.weight_bytes:.2f}×); {speed}",
    ]


# --- plot --------------------------------------------------------------------------------------


def write_plot(report: Report, path: Path) -> Path:
    """Accuracy against size and against latency (ORT and TVM p50), one labelled point per step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = "top1" if report.labelled else "agreement"
    accuracy = [100 * (getattr(step, metric) or 0.0) for step in report.steps]
    names = [step.step for step in report.steps]
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(figure)  # Agg: no display needed, no global pyplot state
    by_size, by_latency = figure.subplots(1, 2)
    _series(by_size, [s.bytes / 1024 for s in report.steps], accuracy, names, "o", "model")
    by_size.set_xlabel("model size (KiB, coded weights at their coded size)")
    for engine, marker in (("ort", "o"), ("tvm", "s")):
        points = [
            (latency.p50_ms, acc, name)
            for step, acc, name in zip(report.steps, accuracy, names, strict=True)
            if (latency := getattr(step, engine)) is not None
        ]
        if points:
            xs, ys, labels = zip(*points, strict=True)
            label = "ONNX Runtime" if engine == "ort" else "TVM (untuned)"
            _series(by_latency, list(xs), list(ys), list(labels), marker, label)
    by_latency.set_xlabel("latency p50 (ms, batch 1)")
    latencies = [x for line in by_latency.get_lines() for x in line.get_xdata()]
    if latencies and min(latencies) > 0 and max(latencies) / min(latencies) > 20:
        by_latency.set_xscale("log")  # untuned TVM and ORT can be 50× apart: keep both readable
    by_latency.legend()
    ylabel = "top-1 (%)" if report.labelled else "agreement with original (%)"
    for axes in (by_size, by_latency):
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    figure.suptitle(f"{report.model} → {report.target}: accuracy against size and latency")
    figure.savefig(str(path), dpi=110)
    return Path(path)


def _series(axes: Any, xs: list[float], ys: list[float], labels: list[str], marker: str, name: str) -> None:
    axes.plot(xs, ys, marker=marker, linestyle="-", label=name)
    for x, y, label in zip(xs, ys, labels, strict=True):
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
