"""The tolerance compile_model verifies against ONNX Runtime with: 1e-4 of each output's scale for a float
model, QUANTIZED_STEPS quantization steps of each output for an int8 (QDQ) one, `--tolerance` over both;
and a wrong int8 build still refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from convnets import build_convnet
from test_qdq_to_integer import output_step, quantized_convnet
from typer.testing import CliRunner

from edgecam.compiler import verify
from edgecam.compiler.build import compile_model
from edgecam.compiler.cli import app
from edgecam.compiler.errors import VerificationError
from edgecam.compiler.frontends.onnx import load_onnx
from edgecam.compiler.lowering import qdq_to_integer
from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config


def int8_convnet(tmp_path: Path) -> Path:
    """The convnet through the recipe's int8 pass: integer conv and Gemm, logits left float."""
    source = build_convnet(tmp_path / "fp32.onnx")
    calibration = verify.sample_inputs(load_onnx(source), 16, seed=1)
    quantized = create_pass(parse_pass_config({"kind": "int8"})).apply(
        onnx.load(str(source)), PassContext(calibration, tmp_path / "work")
    )
    path = tmp_path / "int8.onnx"
    onnx.save(quantized.model, str(path))
    return path


def test_a_float_model_is_allowed_1e4_of_each_outputs_scale(tmp_path: Path) -> None:
    proto = onnx.load(str(build_convnet(tmp_path / "fp32.onnx")))
    expected = [[np.array([[-3.0, 2.0]], np.float32)], [[np.array([[0.5, 1e-3]], np.float32)]]]
    tolerance = verify.model_tolerance(proto, expected)
    assert tolerance.per_output == pytest.approx((verify.FLOAT_TOLERANCE * 3.0,))
    assert "largest |value|" in tolerance.rule


def test_a_dequantized_output_allows_steps_of_its_scale(tmp_path: Path) -> None:
    model = quantized_convnet(tmp_path)  # quantize_static as is: the logits leave through a DequantizeLinear
    tolerance = verify.model_tolerance(onnx.load(str(model)), [])
    assert tolerance.per_output == pytest.approx((verify.QUANTIZED_STEPS * output_step(model),))
    assert "quantization steps" in tolerance.rule


def test_a_float_output_of_an_int8_model_allows_steps_of_its_range(tmp_path: Path) -> None:
    proto = onnx.load(str(int8_convnet(tmp_path)))
    assert proto.graph.node[-1].op_type == "Gemm"  # the int8 pass dropped the logits' Q/DQ pair
    expected = [[np.array([[-1.0, 4.1]], np.float32)], [[np.array([[0.0, 2.0]], np.float32)]]]
    (bound,) = verify.model_tolerance(proto, expected).per_output
    assert bound == pytest.approx(verify.QUANTIZED_STEPS * 5.1 / 255)


def test_an_int8_model_compiles_with_its_own_default_and_records_it(tmp_path: Path) -> None:
    model = int8_convnet(tmp_path)

    artifact = compile_model(model, "x86_64", tmp_path / "art", samples=4)

    verification = artifact.manifest.verification
    assert verification is not None
    feeds = verify.sample_inputs(load_onnx(model), 4)
    expected = verify.model_tolerance(onnx.load(str(model)), verify.run_onnxruntime(model, feeds))
    assert verification.tolerance == pytest.approx(expected.loosest)
    assert verification.tolerance > 100 * verify.FLOAT_TOLERANCE
    assert verification.max_abs_diff <= verification.tolerance


def test_an_explicit_tolerance_overrides_the_models(tmp_path: Path) -> None:
    artifact = compile_model(int8_convnet(tmp_path), "x86_64", tmp_path / "art", tolerance=0.5, samples=2)
    assert artifact.manifest.verification is not None and artifact.manifest.verification.tolerance == 0.5


def test_a_wrong_int8_build_is_refused_by_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An integer-lowering bug: every activation's scale 10% off (the correct build is exact here).
    The rule's limit, for the record: a zero point off by one moves these logits by ~2.6 steps only."""
    model = int8_convnet(tmp_path)
    right = qdq_to_integer._activation

    def wrong_scale(dq: Any) -> Any:
        found = right(dq)
        return found if isinstance(found, str) else dataclasses.replace(found, scale=found.scale * 1.1)

    monkeypatch.setattr(qdq_to_integer, "_activation", wrong_scale)
    with pytest.raises(VerificationError) as caught:
        compile_model(model, "x86_64", tmp_path / "art", samples=4)
    message = str(caught.value)
    assert "in output 'logits'" in message and "quantization steps" in message
    assert "nothing was written" in message and "--tolerance" in message
    assert not (tmp_path / "art").exists()


def test_cli_help_states_the_default() -> None:
    result = CliRunner().invoke(app, ["compile", "--help"], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert verify.FLOAT_TOLERANCE == 1e-4 and "default: 1e-4 for a float model" in text
    assert f"{verify.QUANTIZED_STEPS} quantization steps of each output" in text
