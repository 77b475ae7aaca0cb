"""`compress` end to end on the bundled model, with test-only passes registered here: the artifact
and its report, the accuracy gate (labelled and not) writing nothing, codings that a later pass
would silently undo, and the CLI."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import yaml
from pydantic import Field
from typer.testing import CliRunner

from edgecam.cli import app
from edgecam.compiler.artifact import load_artifact, sha256_file
from edgecam.compiler.build import compile_model
from edgecam.compiler.compress import compress, measure_recipe
from edgecam.compiler.errors import AccuracyGateError, InvalidOptionError, RecipeError
from edgecam.compiler.evaluate import MeasureOptions
from edgecam.compiler.passes import (
    CompressionPass,
    PassConfig,
    PassContext,
    PassResult,
    WeightCoding,
    register_pass,
)
from edgecam.compiler.passes.backends.onnx import OnnxGraph
from edgecam.compiler.recipe import Recipe, parse_recipe
from edgecam.models.fashion_cnn import onnx_path

MODEL = onnx_path()
SAMPLES = MODEL.parent / "samples.npz"
FC = "20.weight"  # the bundled CNN's last (Gemm) weight
CONV = "onnx::Conv_54"  # its first conv's weight
QUICK = MeasureOptions(runs=2, warmup=1, tvm=False)


class ScaleWeightsConfig(PassConfig):
    kind: Literal["scale_weights"] = "scale_weights"
    initializer: str
    factor: float = Field(default=1.0, ge=-10.0, le=10.0)


@register_pass
class ScaleWeights(CompressionPass[ScaleWeightsConfig]):
    """Multiplies one initializer; reports what the context offered it (evaluate, calibration)."""

    config_type = ScaleWeightsConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        graph = OnnxGraph.copy_of(model)
        name = self.config.initializer
        graph.set_weight(name, graph.weight(name) * np.float32(self.config.factor))
        changes = {
            "initializer": name,
            "top1_before": context.evaluate(model) if context.evaluate else "no evaluate",
            "calibration": len(context.calibration),
            "training": context.training is not None,
        }
        return PassResult(graph.model, changes)


class HalfStoreConfig(PassConfig):
    kind: Literal["half_store"] = "half_store"
    initializer: str


@register_pass
class HalfStore(CompressionPass[HalfStoreConfig]):
    """Stores one initializer as float16 bytes; the model holds exactly what decoding gives."""

    config_type = HalfStoreConfig

    def apply(self, model: Any, context: PassContext) -> PassResult:
        graph = OnnxGraph.copy_of(model)
        name = self.config.initializer
        blob = graph.weight(name).astype(np.float16).tobytes()
        shape = graph.weight(name).shape

        def decode(data: bytes) -> np.ndarray:
            return np.frombuffer(data, np.float16).astype(np.float32).reshape(shape)

        graph.set_weight(name, decode(blob))
        return PassResult(graph.model, {"initializer": name}, WeightCoding("float16", {name: blob}, decode))


def recipe_data(passes: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    return {
        "target": "x86_64",
        "max_accuracy_drop": 2.0,
        "evaluation": {"kind": "npz", "path": str(SAMPLES), "limit": 200},
        "calibration": {"kind": "npz", "path": str(SAMPLES), "limit": 16},
        "passes": passes,
        **overrides,
    }


def make_recipe(passes: list[dict[str, Any]], **overrides: Any) -> Recipe:
    return parse_recipe(recipe_data(passes, **overrides))


def write_recipe(path: Path, passes: list[dict[str, Any]], **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(recipe_data(passes, **overrides)))
    return path


SCALE_CONV = {"kind": "scale_weights", "initializer": CONV, "factor": 1.02}
FLIP_FC = {"kind": "scale_weights", "initializer": FC, "factor": -1.0}


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The bundled CNN compressed and signed through the CLI (TVM latency measured too): the artifact."""
    from edgecam.signing import generate_key_pair

    tmp = tmp_path_factory.mktemp("compress")
    recipe = write_recipe(tmp / "recipe.yaml", [SCALE_CONV])
    generate_key_pair(tmp / "fleet.key", tmp / "fleet.key.pub")
    args = ["compress", str(MODEL), "--recipe", str(recipe), "--out", str(tmp / "art"), "--runs", "3"]
    args += ["--sign-key", str(tmp / "fleet.key")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return tmp / "art", result


def test_cli_compress_writes_a_hashed_artifact_with_the_report(compressed: tuple[Path, Any]) -> None:
    out, result = compressed
    assert "1. scale_weights" in result.output and "accuracy gate passed" in result.output
    assert "artifact to run (library + coded weights)" in result.output  # beside the weight bytes
    # Not a terminal (CliRunner's pipe): progress as log lines, one per stage, in order.
    lines = [line for line in result.output.splitlines() if line.startswith("[") and " s] " in line]
    stages = [line.split(" s] ", 1)[1] for line in lines]
    assert stages[:2] == [f"loading {MODEL.name} and the data sets", "measuring the original model"]
    assert "applying 1. scale_weights" in stages and stages[-1] == "compiling the final model for x86_64"
    manifest = load_artifact(out).manifest  # every file's hash checks out
    assert {"model.so", "reference.onnx", "report.json", "report.png"} <= set(manifest.files)
    assert manifest.recipe is not None and manifest.recipe["passes"][0] == SCALE_CONV
    assert manifest.compression is not None and manifest.compression["gate"]["passed"] is True
    assert manifest.compression["steps"] == ["original", "1. scale_weights"]
    assert manifest.labels[0] == "T-shirt/top"  # the metadata survived into the compiled model
    report = json.loads((out / "report.json").read_text())
    assert [step["step"] for step in report["steps"]] == ["original", "1. scale_weights"]
    for step in report["steps"]:
        assert step["tvm"]["p50_ms"] > 0 and step["ort"]["p50_ms"] > 0 and step["macs"] > 0
    assert manifest.measurements["top1"] == report["steps"][-1]["top1"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from edgecam.signing import load_public_keys, verify_manifest

    verify_manifest(out / "manifest.json", load_public_keys([out.parent / "fleet.key.pub"]))  # --sign-key


def test_the_compiled_model_is_the_compressed_one_and_passes_saw_the_context(
    compressed: tuple[Path, Any], tmp_path: Path
) -> None:
    """The library computes the compressed model; reference.onnx, what shadow mode compares with on
    the camera, is the original (fp32) model, byte for byte."""
    import onnx

    from edgecam.compiler import verify
    from edgecam.compiler.frontends.onnx import load_onnx

    out, _ = compressed
    assert sha256_file(out / "reference.onnx") == sha256_file(MODEL)
    scaled = ScaleWeights(ScaleWeightsConfig(initializer=CONV, factor=1.02)).apply(
        onnx.load(str(MODEL)), PassContext([], tmp_path)
    )
    onnx.save(scaled.model, str(tmp_path / "scaled.onnx"))
    feeds = verify.sample_inputs(load_onnx(MODEL), 2)
    got = verify.run_library(out / "model.so", feeds, ["image"])
    want = verify.run_onnxruntime(tmp_path / "scaled.onnx", feeds)
    original = verify.run_onnxruntime(MODEL, feeds)
    assert verify.max_difference(got, want) < verify.max_difference(original, want) / 10
    report = json.loads((out / "report.json").read_text())
    changes = report["steps"][1]["changes"]
    assert changes["top1_before"] == report["steps"][0]["top1"]  # PassContext.evaluate is top-1
    assert changes["calibration"] == 16 and changes["training"] is False


def test_cli_report_shows_the_stored_report(compressed: tuple[Path, Any]) -> None:
    out, _ = compressed
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "1. scale_weights" in result.output and "accuracy gate passed" in result.output


def test_the_gate_refuses_with_the_numbers_and_writes_nothing(tmp_path: Path) -> None:
    recipe = make_recipe([FLIP_FC])
    with pytest.raises(AccuracyGateError) as caught:
        compress(MODEL, recipe, tmp_path, tmp_path / "art", options=QUICK)
    message = str(caught.value)
    report = caught.value.report  # type: ignore[attr-defined]
    original, final = (step.top1 for step in report.steps)
    assert original > 0.8 and final < 0.5
    assert f"{original * 100:.2f}%" in message and f"{final * 100:.2f}%" in message
    assert "max_accuracy_drop: 2" in message and "Nothing was written" in message
    assert list(tmp_path.iterdir()) == []  # no artifact, no staging directory


def test_without_labels_the_gate_uses_agreement(tmp_path: Path) -> None:
    with np.load(SAMPLES) as data:
        np.savez(tmp_path / "frames.npz", images=data["images"][:100])  # no labels
    recipe = make_recipe(
        [SCALE_CONV], evaluation={"kind": "npz", "path": "frames.npz", "limit": 100}, max_accuracy_drop=0.0
    )
    measured = measure_recipe(MODEL, recipe, tmp_path, options=QUICK)
    gate = measured.report.gate
    assert gate.metric == "agreement" and not measured.report.labelled
    assert all(step.top1 is None for step in measured.report.steps)
    assert gate.final == measured.report.steps[-1].agreement
    flipped = make_recipe([FLIP_FC], evaluation={"kind": "npz", "path": "frames.npz"}, max_accuracy_drop=5.0)
    with pytest.raises(AccuracyGateError, match=r"agreement with the original model fell from 100\.00%"):
        compress(MODEL, flipped, tmp_path, tmp_path / "art", options=QUICK)
    assert not (tmp_path / "art").exists()


def test_a_pass_that_changes_a_coded_initializer_is_refused(tmp_path: Path) -> None:
    recipe = make_recipe(
        [
            {"kind": "half_store", "initializer": FC},
            {"kind": "scale_weights", "initializer": FC, "factor": 0.5},
        ]
    )
    with pytest.raises(RecipeError, match=r"2\. scale_weights changes initializers \['20.weight'\]"):
        measure_recipe(MODEL, recipe, tmp_path, options=QUICK)


def test_a_coding_counts_at_its_coded_size_and_survives_later_passes(tmp_path: Path) -> None:
    half = {"kind": "half_store", "initializer": FC}
    recipe = make_recipe([half, {"kind": "scale_weights", "initializer": CONV, "factor": 1.0}])
    measured = measure_recipe(MODEL, recipe, tmp_path, options=QUICK)
    original, coded, last = measured.report.steps
    assert original.weight_bytes - coded.weight_bytes == 10 * 96 * 2  # float32 → float16 bytes
    assert last.weight_bytes == coded.weight_bytes and measured.coding is not None
    assert set(measured.coding.encoded) == {FC}


@pytest.mark.skipif(
    "weight_coding" not in inspect.signature(compile_model).parameters,
    reason="compile_model has no weight_coding parameter yet",
)
def test_the_last_coding_reaches_the_artifact(tmp_path: Path) -> None:
    artifact, report = compress(
        MODEL, make_recipe([{"kind": "weight_sharing", "bits": 4}]), tmp_path, tmp_path / "art", options=QUICK
    )
    assert artifact.manifest.measurements["weight_bytes"] == report.steps[-1].weight_bytes
    manifest = load_artifact(artifact.path).manifest
    assert manifest.compression is not None and manifest.coded_weights is not None
    # A weight-coded artifact has a shadow reference too: the original model, not the coded one.
    assert manifest.files["reference.onnx"] == sha256_file(MODEL)
    # The report has the artifact's bytes on disk beside the weight bytes, and its compiled latency.
    figures = report.artifact
    assert figures is not None and figures.weight_bytes == report.steps[-1].weight_bytes
    on_disk = {name: (artifact.path / name).stat().st_size for name in ("model.so", "weights.ecw")}
    assert figures.files["model.so"] == on_disk["model.so"]
    assert figures.run_bytes == sum(on_disk.values()) > figures.weight_bytes  # the library is code too
    assert "reference.onnx" in figures.files and figures.latency is not None
    assert figures.latency.p50_ms > 0 and figures.latency_skipped is None
    assert manifest.measurements["artifact_run_bytes"] == figures.run_bytes
    stored = json.loads((artifact.path / "report.json").read_text())
    assert stored["artifact"]["run_bytes"] == figures.run_bytes


def test_a_reference_without_the_models_inputs_is_refused(tmp_path: Path) -> None:
    import onnx

    other = onnx.load(str(MODEL))
    other.graph.input[0].name = "picture"
    other.graph.node[0].input[0] = "picture"
    onnx.save(other, str(tmp_path / "other.onnx"))
    with pytest.raises(InvalidOptionError, match=r"lacks the model's inputs \['image'\]"):
        compile_model(MODEL, "x86_64", tmp_path / "art", reference=tmp_path / "other.onnx")
    assert not (tmp_path / "art").exists()


def test_a_coding_the_camera_cannot_decode_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="codec 'float16' is not one the camera runtime decodes"):
        compress(
            MODEL,
            make_recipe([{"kind": "half_store", "initializer": FC}]),
            tmp_path,
            tmp_path / "art",
            options=QUICK,
        )
    assert not (tmp_path / "art").exists()


def test_cli_gate_failure_exits_2_with_the_table_and_writes_nothing(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", [FLIP_FC], max_accuracy_drop=1.0)
    args = ["compress", str(MODEL), "-r", str(recipe), "-o", str(tmp_path / "art"), "--no-tvm-latency"]
    result = CliRunner().invoke(app, [*args, "--runs", "1"])
    assert result.exit_code == 2, result.output
    assert "accuracy gate FAILED" in result.output and "error: accuracy gate: top-1 fell" in result.output
    assert not (tmp_path / "art").exists()


def test_cli_compress_takes_the_model_from_the_recipe_and_names_a_bad_pass(tmp_path: Path) -> None:
    bad = write_recipe(tmp_path / "bad.yaml", [{"kind": "scale_weights", "initializer": FC, "factor": 99}])
    result = CliRunner().invoke(app, ["compress", "-r", str(bad), "-o", str(tmp_path / "art")])
    assert result.exit_code == 2 and "factor" in result.output and "99" in result.output
    nomodel = write_recipe(tmp_path / "nomodel.yaml", [SCALE_CONV])
    result = CliRunner().invoke(app, ["compress", "-r", str(nomodel), "-o", str(tmp_path / "art")])
    assert result.exit_code == 2 and "no model: give MODEL or set `model:`" in result.output
