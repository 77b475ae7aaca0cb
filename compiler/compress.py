"""`compress`: a recipe's passes in order, measured after every step, gated on accuracy, compiled.

The original model is measured first, then each pass's output (size, MACs, accuracy, agreement,
latency: compiler/evaluate.py). If the final model lost more accuracy than the recipe allows, an
AccuracyGateError carries the numbers and nothing is written; otherwise the final ONNX is compiled
for the recipe's target with compile_model and the report (JSON + PNG) travels in the artifact.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecam.compiler.errors import AccuracyGateError, ModelImportError, RecipeError
from edgecam.compiler.evaluate import EvalSet, Evaluator, Measurement, MeasureOptions
from edgecam.compiler.recipe import Recipe
from edgecam.compiler.report import REPORT_JSON, REPORT_PNG, GateResult, Report, write_json, write_plot

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgecam.compiler.artifact import Artifact
    from edgecam.compiler.frontends.onnx import OnnxModel
    from edgecam.compiler.passes.base import Feeds, WeightCoding
    from edgecam.compiler.training.trainer import Trainer

# (what is happening, stages done, stages in all): the CLI draws its progress bar from it.
OnProgress = Callable[[str, int, int], None]


class GateFailure(AccuracyGateError):
    """The gate refused the final model; `report` holds every step's numbers for the CLI to show."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Measured:
    """A recipe run before anything is written: the report, the final model and its coding."""

    report: Report
    source: OnnxModel
    model: Any  # onnx.ModelProto
    coding: WeightCoding | None


@dataclass
class _Stages:
    """Counts stages for progress: load, measure original, then apply + measure per pass, compile."""

    on_progress: OnProgress
    total: int
    done: int = 0

    def start(self, message: str) -> None:
        self.on_progress(message, self.done, self.total)
        self.done += 1

    def detail(self, message: str) -> None:
        self.on_progress(message, max(self.done - 1, 0), self.total)

    def pass_detail(self, step: str, note: str) -> None:
        """A line a pass shows while it runs (PassContext.progress)."""
        self.detail(f"applying {step}: {note}")


def measure_recipe(
    model_path: Path,
    recipe: Recipe,
    base_dir: Path,
    on_progress: OnProgress = lambda message, done, total: None,
    options: MeasureOptions | None = None,
) -> Measured:
    """Apply the recipe's passes to the model, measuring after each; write nothing."""
    from edgecam.compiler.frontends.onnx import load_onnx

    stages = _Stages(on_progress, total=2 + 2 * len(recipe.passes) + 1)
    stages.start(f"loading {Path(model_path).name} and the data sets")
    source = load_onnx(Path(model_path))
    data, calibration = load_data(recipe, Path(base_dir), source)
    with Evaluator(data, recipe.target, recipe.target_options, options, stages.detail) as evaluator:
        stages.start("measuring the original model")
        steps = [evaluator.measure("original", source.proto)]
        trainer = _trainer(recipe, Path(base_dir), source)
        model, coding = _run_passes(recipe, source.proto, calibration, evaluator, stages, steps, trainer)
    report = Report(
        model=source.name,
        target=recipe.target,
        evaluation_samples=len(data.feeds),
        labelled=data.labels is not None,
        options=options or MeasureOptions(),
        recipe=recipe.model_dump(mode="json"),
        steps=steps,
        gate=gate(steps, recipe.max_accuracy_drop, labelled=data.labels is not None),
    )
    return Measured(report=report, source=source, model=model, coding=coding)


def _run_passes(
    recipe: Recipe,
    model: Any,
    calibration: list[Feeds],
    evaluator: Evaluator,
    stages: _Stages,
    steps: list[Measurement],
    trainer: Trainer | None = None,
) -> tuple[Any, WeightCoding | None]:
    """Each pass on the previous one's output, measured after it (appended to `steps`)."""
    from edgecam.compiler.passes import PassContext, create_pass

    coding: WeightCoding | None = None
    with tempfile.TemporaryDirectory(prefix="edgecam-passes-") as tmp:
        for index, config in enumerate(recipe.passes, start=1):
            step = f"{index}. {config.kind}"
            stages.start(f"applying {step}")
            work_dir = Path(tmp) / f"{index}-{config.kind}"
            work_dir.mkdir()
            context = PassContext(
                calibration,
                work_dir,
                evaluate=evaluator.top1,
                seed=recipe.seed,
                progress=partial(stages.pass_detail, step),
                training=replace(trainer, progress=partial(stages.pass_detail, step)) if trainer else None,
            )
            result = create_pass(config).apply(model, context)
            if coding is not None and result.coding is None:
                _check_coding_kept(coding, model, result.model, step)
            coding = result.coding or coding
            model = result.model
            stages.start(f"measuring {step}")
            steps.append(evaluator.measure(step, model, coding, result.changes))
    return model, coding


def _trainer(recipe: Recipe, base_dir: Path, source: OnnxModel) -> Trainer | None:
    """The recipe's training seam bound to the model's preprocessing; None without `training:`."""
    if recipe.training is None:
        return None
    from edgecam.compiler.training.trainer import Trainer

    trainer = Trainer(recipe.training, source.preprocessing, source.inputs[0].name, base_dir, recipe.seed)
    if (distillation := recipe.distillation) is not None:
        from edgecam.compiler.training import require_train_extra
        from edgecam.compiler.training.distill import distillation_loss, teacher_model

        require_train_extra("the recipe's `distillation:`")

        # One loss for every fine-tune of the recipe: the teacher's soft targets plus the labels.
        teacher = teacher_model(distillation, base_dir, source.proto)
        trainer.loss = distillation_loss(teacher, distillation.temperature, distillation.alpha)
    return trainer


def load_data(recipe: Recipe, base_dir: Path, source: OnnxModel) -> tuple[EvalSet, list[Feeds]]:
    """Evaluation and calibration samples through the model's own preprocessing (as the server does)."""
    from edgecam.compiler.datasets import labels_of, load_dataset, to_feeds

    if len(source.inputs) != 1:
        raise ModelImportError(
            f"{source.path} has {len(source.inputs)} inputs {[s.name for s in source.inputs]}; "
            "compression evaluates image models with exactly one input"
        )
    name, spec = source.inputs[0].name, source.preprocessing
    samples = load_dataset(recipe.evaluation, base_dir)
    data = EvalSet(to_feeds(samples, spec, name), labels_of(samples))
    calibration = (
        to_feeds(load_dataset(recipe.calibration, base_dir), spec, name) if recipe.calibration else []
    )
    return data, calibration


def gate(steps: list[Measurement], allowed_pp: float, labelled: bool) -> GateResult:
    """Top-1 drop (with labels) or disagreement with the original (without), in percentage points."""
    first, last = steps[0], steps[-1]
    if labelled and first.top1 is not None and last.top1 is not None:
        metric, original, final = "top1", first.top1, last.top1
    else:
        metric, original, final = "agreement", 1.0, float(last.agreement or 0.0)
    drop = round((original - final) * 100, 6)
    return GateResult(
        metric=metric,  # type: ignore[arg-type]
        original=original,
        final=final,
        drop_pp=drop,
        allowed_pp=allowed_pp,
        passed=drop <= allowed_pp,
    )


def _check_coding_kept(coding: WeightCoding, before: Any, after: Any, step: str) -> None:
    """A pass after the coding pass must leave the coded initializers as they are: the artifact
    stores the coding, so a later change would be silently lost."""
    from onnx import numpy_helper

    old = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer if i.name in coding.encoded}
    new = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer if i.name in coding.encoded}
    changed = sorted(
        name
        for name, value in old.items()
        if name not in new or new[name].dtype != value.dtype or not np.array_equal(new[name], value)
    )
    if changed:
        raise RecipeError(
            f"pass {step} changes initializers {changed} that an earlier pass stored as {coding.codec!r} "
            "coding; reorder the recipe's passes so the coding pass comes last (int8 and weight_sharing "
            "do not combine in either order: keep one of them)"
        )


def compress(
    model_path: Path,
    recipe: Recipe,
    base_dir: Path,
    out_dir: Path,
    on_progress: OnProgress = lambda message, done, total: None,
    options: MeasureOptions | None = None,
    sign_key: Ed25519PrivateKey | None = None,
) -> tuple[Artifact, Report]:
    """Run the recipe, apply the accuracy gate and write the compiled artifact with its report.

    Raises GateFailure (an AccuracyGateError) with the numbers when the gate refuses; then, as on
    any other error, nothing is written.
    """
    measured = measure_recipe(model_path, recipe, base_dir, on_progress, options)
    report = measured.report
    if not report.gate.passed:
        raise GateFailure(gate_message(report), report)
    steps = len(report.steps) * 2
    on_progress(f"compiling the final model for {recipe.target}", steps, steps + 1)
    return _write_artifact(measured, recipe, Path(out_dir), sign_key)


def gate_message(report: Report) -> str:
    gate = report.gate
    name = "top-1" if gate.metric == "top1" else "agreement with the original model"
    values = [step.top1 if gate.metric == "top1" else step.agreement for step in report.steps]
    per_step = ", ".join(
        f"{step.step} {value * 100:.2f}%"
        for step, value in zip(report.steps, values, strict=True)
        if value is not None
    )
    return (
        f"accuracy gate: {name} fell from {gate.original * 100:.2f}% to {gate.final * 100:.2f}% "
        f"({gate.drop_pp:.2f} percentage points) on {report.evaluation_samples} inputs; the recipe allows "
        f"max_accuracy_drop: {gate.allowed_pp:g}. Per step: {per_step}. Nothing was written"
    )


def _write_artifact(
    measured: Measured, recipe: Recipe, out_dir: Path, sign_key: Ed25519PrivateKey | None
) -> tuple[Artifact, Report]:
    """compile_model into a scratch directory, measure what it built (the report's `artifact`), then
    one atomic write of its files plus the report."""
    import onnx

    from edgecam.compiler.artifact import write_artifact
    from edgecam.compiler.artifact_figures import measure_artifact
    from edgecam.compiler.build import compile_model

    with tempfile.TemporaryDirectory(prefix="edgecam-compress-") as tmp:
        final = Path(tmp) / f"{measured.source.path.stem}-compressed.onnx"
        onnx.save(_with_metadata(measured.model, measured.source.proto), str(final))
        # Passed only when there is a coding, so compile_model without the keyword works too.
        extra: dict[str, Any] = {"weight_coding": measured.coding} if measured.coding is not None else {}
        # reference: shadow mode on the camera compares the compressed model with the original.
        built = compile_model(
            final,
            recipe.target,
            Path(tmp) / "build",
            target_options=recipe.target_options,
            reference=measured.source.path,
            **extra,
        )
        final_weights = measured.report.steps[-1].weight_bytes
        figures = measure_artifact(built, final_weights, measured.report.options)
        report = measured.report.model_copy(update={"artifact": figures})
        write_json(report, Path(tmp) / REPORT_JSON)
        write_plot(report, Path(tmp) / REPORT_PNG)
        files = {name: built.path / name for name in built.manifest.files}
        files |= {REPORT_JSON: Path(tmp) / REPORT_JSON, REPORT_PNG: Path(tmp) / REPORT_PNG}
        manifest = built.manifest.model_copy(
            update={
                "recipe": report.recipe,
                "compression": report.summary(),
                "measurements": {**built.manifest.measurements, **_final_numbers(report)},
            }
        )
        return write_artifact(out_dir, manifest, files, sign_key), report


def _with_metadata(model: Any, source: Any) -> Any:
    """A copy of `model` carrying the source's edgecam.* metadata (labels, preprocessing) where a
    pass that rebuilt the model dropped it: the artifact's manifest is made from it."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {prop.key for prop in copy.metadata_props}
    for prop in source.metadata_props:
        if prop.key.startswith("edgecam.") and prop.key not in present:
            copy.metadata_props.add(key=prop.key, value=prop.value)
    return copy


def _final_numbers(report: Report) -> dict[str, float]:
    """The final step's numbers as manifest measurements (the `measured accuracy/size/latency`)."""
    last = report.steps[-1]
    numbers: dict[str, float | None] = {
        "top1": last.top1,
        "agreement": last.agreement,
        "params": last.params,
        "onnx_bytes": last.bytes,
        "weight_bytes": last.weight_bytes,
        "macs": last.macs,
        "ort_p50_ms": last.ort.p50_ms if last.ort else None,
        "ort_p99_ms": last.ort.p99_ms if last.ort else None,
        "tvm_p50_ms": last.tvm.p50_ms if last.tvm else None,
        "tvm_p99_ms": last.tvm.p99_ms if last.tvm else None,
    }
    if (figures := report.artifact) is not None:
        numbers["artifact_run_bytes"] = figures.run_bytes
        numbers["artifact_p50_ms"] = figures.latency.p50_ms if figures.latency else None
        numbers["artifact_p99_ms"] = figures.latency.p99_ms if figures.latency else None
    return {key: float(value) for key, value in numbers.items() if value is not None}
