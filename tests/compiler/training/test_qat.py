"""`kind: qat`: fake quantization with a straight-through gradient while training, and an export that the
int8 lowering computes in integers (7-bit weights included) and that compiles and verifies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecam.compiler.errors import PassError
from edgecam.compiler.passes import PassContext, PassResult, create_pass, parse_pass_config
from edgecam.models.fashion_cnn import onnx_path

SAMPLES = onnx_path().parent / "samples.npz"


def bundled_trainer(tmp_path: Path, limit: int = 128) -> Any:
    from edgecam.compiler.training.config import TrainingConfig
    from edgecam.compiler.training.trainer import Trainer
    from edgecam.models.fashion_cnn.train import PREPROCESSING

    settings = {
        "data": {"kind": "npz", "path": str(SAMPLES), "limit": limit},
        "epochs": 1,
        "batch_size": 64,
        "lr": 1e-4,
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    return Trainer(TrainingConfig.model_validate(settings), PREPROCESSING, "image")


def qat(config: dict[str, Any], tmp_path: Path) -> PassResult:
    import onnx

    context = PassContext([], tmp_path, training=bundled_trainer(tmp_path))
    return create_pass(parse_pass_config({"kind": "qat", **config})).apply(
        onnx.load(str(onnx_path())), context
    )


@pytest.fixture(scope="module")
def seven_bit(tmp_path_factory: pytest.TempPathFactory) -> tuple[PassResult, Path]:
    import onnx

    tmp = tmp_path_factory.mktemp("qat")
    result = qat({}, tmp)
    onnx.save(result.model, str(tmp / "qat.onnx"))
    return result, tmp / "qat.onnx"


def test_a_qat_export_lowers_to_integer_ops(seven_bit: tuple[PassResult, Path]) -> None:
    import onnx
    from onnx import numpy_helper
    from tvm.relax.frontend.onnx import from_onnx

    from edgecam.compiler.lowering.qdq_to_integer import fold_qdq
    from edgecam.compiler.targets.x86_dots import VPMADDUBSW

    result, path = seven_bit
    model = onnx.load(str(path))
    _, folding = fold_qdq(from_onnx(model, keep_params_in_input=False))
    assert folding.folded == {"conv2d": 5, "matmul": 1} and folding.left == {}
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_quantized")]
    assert len(weights) == 6 and all(w.dtype == np.int8 for w in weights)
    assert all(VPMADDUBSW.fits(w) for w in weights)  # 7-bit: AVX2's fast dot takes every layer
    assert min(int(w.min()) for w in weights) >= -64 and max(int(w.max()) for w in weights) <= 63
    # ONNX Runtime on the QDQ export computes what the fake-quantized torch model computed.
    assert result.changes["export_difference"] < 0.02
    assert result.changes["training"]["epochs_run"] == 1


def test_a_qat_export_compiles_to_a_verified_integer_artifact(
    seven_bit: tuple[PassResult, Path], tmp_path: Path
) -> None:
    from edgecam.compiler.build import compile_model

    artifact = compile_model(seven_bit[1], "x86_64", tmp_path / "art", samples=4)
    verification = artifact.manifest.verification
    assert verification is not None and verification.max_abs_diff <= verification.tolerance
    assert verification.compared[0].bound > 1e-3  # the quantized model's rule, not the float one


def test_fake_quantization_passes_the_gradient_straight_through(tmp_path: Path) -> None:
    """Forward: the weight on the int8 grid. Backward: d loss / d float weight is d loss / d quantized
    weight unchanged (the straight-through estimator) wherever the weight is inside the clamp range;
    and a training step through the converted model reaches the float weights."""
    import onnx
    import torch

    from edgecam.compiler.training import fake_quant
    from edgecam.compiler.training.convert import to_torch

    converted = to_torch(onnx.load(str(onnx_path())))
    quantized = fake_quant.attach(converted, 7, skip=set())
    weight_fq = quantized.weights["/3/Conv"]
    weight = converted.module.get_submodule("3/Conv").parametrizations.weight.original
    converted.module.train()(torch.randn(2, 1, 28, 28)).square().sum().backward()
    assert weight.grad is not None and float(weight.grad.abs().sum()) > 0

    leaf = weight.detach().clone().requires_grad_(True)
    upstream = torch.randn_like(leaf)
    on_grid = weight_fq(leaf)
    (on_grid * upstream).sum().backward()
    scale = weight_fq.scale.reshape(-1, 1, 1, 1)
    steps = (on_grid / scale).detach().numpy()
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)  # on the grid, within [-64, 63]
    assert np.round(steps).min() >= -64 and np.round(steps).max() <= 63
    inside = (leaf / scale).detach().abs() < 63  # clear of the clamp (its edge is a rounding tie)
    assert leaf.grad is not None and float(inside.float().mean()) > 0.99
    np.testing.assert_array_equal(leaf.grad[inside].numpy(), upstream[inside].numpy())


def test_bad_exclude_and_a_recipe_without_training_are_refused(tmp_path: Path) -> None:
    from edgecam.compiler.errors import RecipeError
    from edgecam.compiler.recipe import parse_recipe

    with pytest.raises(PassError, match=r"`exclude` pattern '/99/Conv' matches no Conv/Gemm node"):
        qat({"exclude": ["/99/Conv"]}, tmp_path)
    data = {"kind": "npz", "path": str(SAMPLES)}
    with pytest.raises(RecipeError, match=r"pass 0 \(qat\) trains: add a `training:` section"):
        parse_recipe({"evaluation": data, "passes": [{"kind": "qat"}]})
