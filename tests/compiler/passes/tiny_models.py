"""Tiny ONNX models built in code for the pass tests: every layer kind the passes must handle."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


def _model(nodes: list[Any], inits: dict[str, np.ndarray], inputs: list[Any], outputs: list[Any]) -> Any:
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        outputs,
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def residual_net(seed: int = 0, channels: int = 8, classes: int = 10) -> Any:
    """image [1,3,16,16] → Conv3x3 → BN → Relu ─┬→ Conv1x1 → Add → Relu → DWConv3x3 → Relu → GAP → Gemm.
    └────────────↗
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    c = channels
    inits = {
        "c1_w": rng.standard_normal((c, 3, 3, 3)) * 0.3,
        "c1_b": rng.standard_normal(c) * 0.1,
        "bn_scale": rng.uniform(0.5, 1.5, c),
        "bn_bias": rng.standard_normal(c) * 0.1,
        "bn_mean": rng.standard_normal(c) * 0.1,
        "bn_var": rng.uniform(0.5, 1.5, c),
        "c2_w": rng.standard_normal((c, c, 1, 1)) * 0.3,
        "c2_b": rng.standard_normal(c) * 0.1,
        "dw_w": rng.standard_normal((c, 1, 3, 3)) * 0.3,
        "dw_b": rng.standard_normal(c) * 0.1,
        "fc_w": rng.standard_normal((classes, c)) * 0.3,
        "fc_b": rng.standard_normal(classes) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["image", "c1_w", "c1_b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node(
            "BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"], name="bn1"
        ),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "dw_w", "dw_b"], ["dw"], pads=[1, 1, 1, 1], group=c, name="dwconv"),
        helper.make_node("Relu", ["dw"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    return _model(
        nodes,
        inits,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
    )


def mlp(seed: int = 0, sizes: tuple[int, ...] = (64, 48, 10)) -> Any:
    """x [1,sizes[0]] → (MatMul + Add → Relu)* → logits: dense layers only."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {}
    nodes = []
    current = "x"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        inits[f"w{i}"] = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
        inits[f"b{i}"] = rng.standard_normal(n_out) * 0.1
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"], name=f"matmul{i}"))
        last = i == len(sizes) - 2
        nodes.append(
            helper.make_node("Add", [f"m{i}", f"b{i}"], ["logits" if last else f"a{i}"], name=f"add{i}")
        )
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}"))
            current = f"h{i}"
    return _model(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, sizes[-1]])],
    )


def run(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def random_feeds(model: Any, count: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    spec = model.graph.input[0]
    shape = [d.dim_value for d in spec.type.tensor_type.shape.dim]
    return [{spec.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]
