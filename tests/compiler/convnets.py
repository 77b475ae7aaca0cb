"""The tiny convnet the compiler tests build in code (a module of its own, not conftest, so that test
modules can import it: every test folder has a conftest, and `import conftest` finds whichever came
first on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def build_convnet(path: Path, seed: int = 0, metadata: bool = True, batch: int | str = 1) -> Path:
    """image [batch,1,28,28] → Conv 3x3 (4) → Relu → MaxPool → Flatten → Gemm → logits [batch,10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "conv_b"),
        numpy_helper.from_array((rng.standard_normal((10, 4 * 14 * 14)) * 0.05).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if metadata:
        helper.set_model_props(
            model,
            {
                "edgecam.model_name": "convnet",
                "edgecam.labels": json.dumps([f"c{i}" for i in range(10)]),
                "edgecam.preprocessing": json.dumps(
                    {
                        "height": 28,
                        "width": 28,
                        "color": "GRAY",
                        "layout": "NCHW",
                        "mean": [0.5],
                        "std": [0.5],
                    }
                ),
            },
        )
    onnx.save(model, str(path))
    return path


def save_graph(path: Path, nodes: list[Any], x: list[int], y: list[int], inits: list[Any]) -> Path:
    """An opset-17 model of `nodes` from float input "x" of shape `x` to float output "y", saved."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def conv_net(
    path: Path,
    channels: int,
    size: int,
    outputs: int,
    epilogue: str = "relu6",
    batch: int = 1,
    **conv: Any,
) -> Path:
    """A conv (1×1 unless `conv` says otherwise) of `channels` → `outputs` on a size × size map, then
    `epilogue`: "relu6" (bias + Clip), "residual" (bias + the input added back) or "none"."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    kernel, group = conv.get("kernel_shape", [1, 1]), conv.get("group", 1)
    weight = rng.standard_normal((outputs, channels // group, *kernel)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(weight, "w")]
    strides, dilations = conv.get("strides", [1, 1]), conv.get("dilations", [1, 1])
    pads = conv.get("pads", [0, 0, 0, 0])
    out = [
        (size + pads[axis] + pads[axis + 2] - dilations[axis] * (kernel[axis] - 1) - 1) // strides[axis] + 1
        for axis in (0, 1)
    ]
    if epilogue == "none":
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], **conv)]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal(outputs).astype(np.float32), "b"))
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **conv)]
        if epilogue == "relu6":
            inits += [
                numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
            ]
            nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
        else:
            nodes.append(helper.make_node("Add", ["c", "x"], ["y"]))
    shape_in, shape_out = [batch, channels, size, size], [batch, outputs, *out]
    return save_graph(path, nodes, shape_in, shape_out, inits)
