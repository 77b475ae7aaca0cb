"""Structured pruning on torch-pruning's dependency graph: a physically smaller ONNX that matches its
torch model, the classifier's outputs kept, fine-tuned back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config

pytest.importorskip("torch_pruning")


def _convnet(path: Path) -> Path:
    import onnx
    import torch

    from edgecam.preprocessing import Preprocessing

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4),
    )  # fmt: skip
    torch.onnx.export(
        net.eval(), (torch.zeros(1, 1, 8, 8),), str(path), input_names=["image"], output_names=["logits"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    model = onnx.load(str(path))
    spec = Preprocessing(height=8, width=8, color="GRAY", layout="NCHW")
    onnx.helper.set_model_props(model, {"edgecam.preprocessing": spec.model_dump_json()})
    onnx.save(model, str(path))
    return path


def _shapes(model: Any) -> dict[str, tuple[int, ...]]:
    from edgecam.compiler.passes.backends.onnx import OnnxGraph

    graph = OnnxGraph(model)
    return {layer.name: graph.weight(layer.weight).shape for layer in graph.weighted_layers(("Conv", "Gemm"))}


@pytest.mark.parametrize("criterion", ["l1", "taylor", "thinet", "slimming", "random"])
def test_pruned_onnx_is_smaller_keeps_outputs(criterion: str, trainer_for: Any, tmp_path: Path) -> None:
    import onnx

    source = onnx.load(str(_convnet(tmp_path / "convnet.onnx")))
    trainer = trainer_for(patience=None, epochs=1)
    config = {"kind": "structured_prune", "criterion": criterion, "ratio": 0.5, "steps": 2}
    context = PassContext(calibration=[], work_dir=tmp_path, training=trainer, seed=0)
    result = create_pass(parse_pass_config(config)).apply(source, context)
    before, after = _shapes(source), _shapes(result.model)
    assert list(after) == list(before)  # the layers keep their names
    convs = [name for name in before if len(before[name]) == 4]
    for name in convs:
        assert after[name][0] == before[name][0] // 2, name  # half the output channels, physically gone
    gemm = next(name for name in before if len(before[name]) == 2)
    assert after[gemm] == (4, 8)  # the classifier keeps its 4 outputs and loses the removed inputs
    assert sum(np.prod(s) for s in after.values()) < 0.4 * sum(np.prod(s) for s in before.values())
    changes = result.changes
    assert changes["macs_after"] < 0.4 * changes["macs_before"] and len(changes["rounds"]) == 2
    onnx.checker.check_model(result.model, full_check=True)


def test_thinet_removes_the_channels_the_next_layer_misses_least() -> None:
    import torch

    from edgecam.compiler.training.thinet import _greedy_order

    # Channels 0 and 1 cancel each other in the next layer; 2 is small; 3 is large.
    contribution = torch.tensor([[1.0, -2.0, 1.0], [-1.0, 2.0, -1.0], [0.1, 0.1, 0.1], [3.0, 0.0, 3.0]])
    order = _greedy_order(contribution)
    assert order[2] == 0  # alone, the smallest change
    assert {int(order[0]), int(order[1])} == {1, 2}  # together they change nothing: removed next
    assert order[3] == 3


def test_slimming_gates_fold_into_the_convs_without_changing_outputs() -> None:
    import torch

    from edgecam.compiler.training.slimming import SlimmingGates

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    gates = SlimmingGates([net[0]])
    with torch.no_grad():
        gates.gates[net[0]].copy_(torch.tensor([0.5, 0.0, 2.0, -1.0]))
    x = torch.randn(2, 1, 8, 8)
    gated = net(x)
    assert float(gates.penalty()) == pytest.approx(3.5)
    gates.fold()
    torch.testing.assert_close(net(x), gated)
    assert not hasattr(net[0], "slimming_gate") and torch.equal(
        gates.scales[net[0]], torch.tensor([0.5, 0, 2, 1])
    )
