"""edgecam's ONNX Runtime sessions compute int8 layers exactly (session_options' EXACT_INT8).

The model is one QDQ MatMul whose u8×s8 products pair up past int16 (255·127·2 > 32767): ORT's default
x86 kernels without VNNI saturate there; edgecam's options must give the integer math's result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def qdq_matmul(k: int = 64) -> tuple[bytes, np.ndarray, np.ndarray]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = np.full((1, k), 255, np.uint8)
    w = np.full((k, 4), 127, np.int8)
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.float32(1.0), "one"),
        numpy_helper.from_array(np.uint8(0), "x_zero"),
        numpy_helper.from_array(np.int8(0), "w_zero"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "one", "x_zero"], ["x_f"]),
        helper.make_node("DequantizeLinear", ["w_q", "one", "w_zero"], ["w_f"]),
        helper.make_node("MatMul", ["x_f", "w_f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString(), x, x.astype(np.int64) @ w.astype(np.int64)


def test_edgecam_sessions_compute_int8_exactly() -> None:
    import onnxruntime as ort

    from edgecam.ort_options import session_options

    model, x, exact = qdq_matmul()
    session = ort.InferenceSession(model, session_options(1), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], exact.astype(np.float32))


def test_the_server_reference_runtime_uses_them(tmp_path: Path) -> None:
    from edgecam.server.runtime.onnxruntime import OnnxRuntime

    model, x, exact = qdq_matmul()
    (tmp_path / "m.onnx").write_bytes(model)
    outputs = OnnxRuntime(tmp_path / "m.onnx", intra_op_threads=1).run({"x": x})
    np.testing.assert_array_equal(next(iter(outputs.values())), exact.astype(np.float32))
