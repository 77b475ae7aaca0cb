"""A failed build names the ONNX node it comes from (compiler/node_errors.py), and the escape hatch
it may point to (--no-channels-last) works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from convnets import conv_net

from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import NodeBuildError


def _cast_chain(path: Path, relus_before: int, relus_after: int) -> Path:
    """x → Relu × relus_before → Cast to FLOAT4E2M1 ("cast_narrow") → Cast back → Relu × relus_after.
    TVM 0.27 imports the 4-bit float cast but cannot build it (its cast check takes float → float
    only of the types it knows): a real build failure at one known node."""
    import onnx
    from onnx import TensorProto, helper

    nodes, last = [], "x"
    for i in range(relus_before):
        nodes.append(helper.make_node("Relu", [last], [f"r{i}"], name=f"relu_before{i}"))
        last = f"r{i}"
    nodes += [
        helper.make_node("Cast", [last], ["narrow"], to=TensorProto.FLOAT4E2M1, name="cast_narrow"),
        helper.make_node("Cast", ["narrow"], ["wide"], to=TensorProto.FLOAT, name="cast_back"),
    ]
    last = "wide"
    for i in range(relus_after):
        nodes.append(helper.make_node("Relu", [last], [f"a{i}"], name=f"relu_after{i}"))
        last = f"a{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "cast_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("before", "after", "input_name"), [(1, 0, "r0"), (6, 5, "r5")])
def test_a_build_failure_names_the_onnx_node_it_comes_from(
    before: int, after: int, input_name: str, tmp_path: Path
) -> None:
    model = _cast_chain(tmp_path / "m.onnx", before, after)
    with pytest.raises(NodeBuildError) as caught:
        compile_model(model, "x86_64", tmp_path / "art", samples=1)
    error = caught.value
    assert (error.node_name, error.op_type, error.opset) == ("cast_narrow", "Cast", 21)
    assert error.input_shapes == {input_name: [1, 3, 4, 4]}
    assert error.relax_ops == ["relax.astype"]
    assert error.culprit == "tvm"  # plain TVM fails on it too: another opset/op is the way out
    message = str(error)
    assert message.startswith("TVM could not build ONNX node 'cast_narrow' (Cast, opset 21")
    assert error.cause in message and "another opset" in message
    assert not (tmp_path / "art").exists()


def _conv_layouts(mod: Any) -> set[str]:
    from tvm import relax

    layouts: set[str] = set()

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.conv2d":
            layouts.add(str(expr.attrs.data_layout))

    relax.analysis.post_order_visit(mod["main"], visit)
    return layouts


def test_the_channels_last_option_turns_the_rewrite_off(tmp_path: Path) -> None:
    from edgecam.compiler.frontends.onnx import load_onnx, to_relax
    from edgecam.compiler.targets import create_target

    # Depthwise: it stays a conv2d after prepare (group-1 convs become packed GEMMs).
    model = conv_net(tmp_path / "c.onnx", 3, 6, 3, kernel_shape=[3, 3], group=3)
    mod = to_relax(load_onnx(model))
    assert _conv_layouts(create_target("x86_64").prepare(mod)) == {"NHWC"}
    assert _conv_layouts(create_target("x86_64", channels_last=False).prepare(mod)) == {"NCHW"}


def test_cli_compiles_with_no_channels_last(tmp_path: Path) -> None:
    model = conv_net(tmp_path / "c.onnx", 3, 6, 16, kernel_shape=[3, 3])
    result = subprocess.run(
        [sys.executable, "-m", "edgecam", "compile", str(model), "--target", "x86_64", "--out",
         str(tmp_path / "art"), "--samples", "1", "--no-channels-last"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "art" / "manifest.json").is_file()
