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


def concat_net(seed: int = 0) -> Any:
    """image [1,3,12,12] ─→ ConvA(4) → Mul[1,4,1,1] → Relu ─┐
                      └→ ConvB(6) → Add[6,1,1] → Clip ──→ Concat(10) → Conv3x3(8) → Relu → MaxPool
    → AveragePool → Flatten [1,72] → MatMul + Add → logits: Concat offsets, per-channel constants,
    pools and a MatMul reading H*W columns per channel.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = {
        "ca_w": rng.standard_normal((4, 3, 3, 3)) * 0.3,
        "ca_b": rng.standard_normal(4) * 0.1,
        "ca_scale": rng.uniform(0.5, 1.5, (1, 4, 1, 1)),
        "cb_w": rng.standard_normal((6, 3, 1, 1)) * 0.3,
        "cb_b": rng.standard_normal(6) * 0.1,
        "cb_shift": rng.standard_normal((6, 1, 1)) * 0.1,
        "clip_lo": np.array(0.0),
        "clip_hi": np.array(6.0),
        "c3_w": rng.standard_normal((8, 10, 3, 3)) * 0.2,
        "c3_b": rng.standard_normal(8) * 0.1,
        "fc_w": rng.standard_normal((72, 10)) * 0.1,
        "fc_b": rng.standard_normal(10) * 0.1,
    }
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [
        helper.make_node("Conv", ["image", "ca_w", "ca_b"], ["ca"], pads=[1, 1, 1, 1], name="conva"),
        helper.make_node("Mul", ["ca", "ca_scale"], ["ca_s"], name="scale"),
        helper.make_node("Relu", ["ca_s"], ["a"], name="relua"),
        helper.make_node("Conv", ["image", "cb_w", "cb_b"], ["cb"], name="convb"),
        helper.make_node("Add", ["cb", "cb_shift"], ["cb_s"], name="shift"),
        helper.make_node("Clip", ["cb_s", "clip_lo", "clip_hi"], ["b"], name="clip"),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="concat"),
        helper.make_node("Conv", ["cat", "c3_w", "c3_b"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("MaxPool", ["r3"], ["mp"], name="maxpool", **pool),
        helper.make_node("AveragePool", ["mp"], ["ap"], name="avgpool", **pool),
        helper.make_node("Flatten", ["ap"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc_w"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"], name="fc_bias"),
    ]
    return _model(
        nodes,
        inits,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
    )


def _decaying(rng: np.random.Generator, rows: int, cols: int, decay: float, rank: int | None) -> np.ndarray:
    """rows×cols with singular values decay**i (as trained layers have); only `rank` of them when given."""
    size = min(rows, cols)
    u = np.linalg.qr(rng.standard_normal((rows, size)))[0]
    v = np.linalg.qr(rng.standard_normal((cols, size)))[0]
    s = decay ** np.arange(size)
    s[size if rank is None else rank :] = 0.0
    return (u * s) @ v.T


def factor_net(seed: int = 0, decay: float = 0.6, rank: int | None = None) -> Any:
    """image [1,8,12,12] → Conv3x3 s2 (16) → Relu → Conv1x1 s2 p1 (16) → Relu → DWConv3x3 → Relu → GAP
    → Flatten → Gemm transB=1 (24) → Relu → Gemm transB=0 alpha/beta (10) → logits: what low_rank factors.

    Weights have decaying spectra (and, with `rank`, exactly that rank; the 3×3 conv that multilinear
    rank on its out/in channel modes)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    core = rng.standard_normal((16, 8, 3, 3))
    conv3 = np.einsum(
        "abhw,oa,ib->oihw", core, _decaying(rng, 16, 16, decay, rank), _decaying(rng, 8, 8, decay, rank)
    )
    inits = {
        "k3_w": conv3 * 0.3 / conv3.std(),
        "k3_b": rng.standard_normal(16) * 0.1,
        "p1_w": _decaying(rng, 16, 16, decay, rank).reshape(16, 16, 1, 1),
        "p1_b": rng.standard_normal(16) * 0.1,
        "dw_w": rng.standard_normal((16, 1, 3, 3)) * 0.3,
        "dw_b": rng.standard_normal(16) * 0.1,
        "fc1_w": _decaying(rng, 24, 16, decay, rank),
        "fc1_b": rng.standard_normal(24) * 0.1,
        "fc2_w": _decaying(rng, 24, 10, decay, rank),
        "fc2_b": rng.standard_normal(10) * 0.1,
    }
    nodes = [
        helper.make_node(
            "Conv", ["image", "k3_w", "k3_b"], ["k3"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv3x3"
        ),
        helper.make_node("Relu", ["k3"], ["r1"], name="relu1"),
        # A padded, strided 1×1 conv: its border outputs are the bias alone.
        helper.make_node(
            "Conv", ["r1", "p1_w", "p1_b"], ["p1"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv1x1"
        ),
        helper.make_node("Relu", ["p1"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "dw_w", "dw_b"], ["dw"], pads=[1, 1, 1, 1], group=16, name="dwconv"),
        helper.make_node("Relu", ["dw"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["f1"], transB=1, name="fc1"),
        helper.make_node("Relu", ["f1"], ["r4"], name="relu4"),
        helper.make_node("Gemm", ["r4", "fc2_w", "fc2_b"], ["logits"], alpha=0.5, beta=2.0, name="fc2"),
    ]
    return _model(
        nodes,
        inits,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
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


def weights_of(model: Any) -> dict[str, np.ndarray]:
    """Every initializer as a numpy array, by name."""
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def with_weights(model: Any, values: dict[str, np.ndarray]) -> Any:
    """A copy of `model` whose named initializers hold `values` (same names and dtypes, any shape)."""
    import onnx
    from onnx import numpy_helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.name in values:
            dtype = numpy_helper.to_array(init).dtype
            init.CopyFrom(numpy_helper.from_array(np.asarray(values[init.name], dtype), init.name))
    return copy
