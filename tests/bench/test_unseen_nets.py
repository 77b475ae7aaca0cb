"""bench/unseen_nets.py builds what bench_unseen.py claims to measure: valid opset-17 models of each
family's operator mix, which ONNX Runtime runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def unseen_nets(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))  # the bench scripts import each other as top-level modules
    import unseen_nets

    return unseen_nets


def _grouped(model: Any) -> list[int]:
    """Groups of the convs that are grouped but not depthwise."""
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1 and weights[node.input[1]][1] > 1:
            found.append(group)
    return found


def test_each_family_has_its_operators(unseen_nets: Any) -> None:
    ops = {
        name: Counter(n.op_type for n in build().graph.node) for name, build in unseen_nets.NETWORKS.items()
    }
    assert len(ops) >= 8
    assert ops["efficientnet_b0"]["Sigmoid"] > 16 and ops["efficientnet_b0"]["GlobalAveragePool"] == 17
    assert ops["mobilenet_v3_large"]["HardSwish"] > 10 and ops["mobilenet_v3_large"]["HardSigmoid"] == 8
    assert ops["densenet_bc"]["Concat"] == 38 and ops["densenet_bc"]["BatchNormalization"] == 42
    assert ops["squeezenet1_1"]["Concat"] == 8
    assert ops["shufflenet_v2"]["Transpose"] == 16 and ops["shufflenet_v2"]["Split"] == 13
    assert ops["ghostnet"]["Concat"] == 32 and ops["googlenet"]["Concat"] == 9
    assert set(_grouped(unseen_nets.resnext())) == {32}
    assert len(_grouped(unseen_nets.regnet_y())) == 16


def test_a_network_runs_under_onnxruntime(unseen_nets: Any) -> None:
    import onnxruntime as ort

    model = unseen_nets.shufflenet_v2()
    assert model.opset_import[0].version == 17
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": np.random.default_rng(0).random((1, 3, 224, 224), np.float32)})
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()
