"""Graphs from other exporters that the channels-last rewrite once broke (issue 26): each is built in
code as the smallest model that showed the failure, compiled for x86_64 and verified against ONNX
Runtime; the rewrite must leave the ops it does not know in their layout, not fail the build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecam.compiler.artifact import load_artifact
from edgecam.compiler.build import compile_model


def _model(path: Path, nodes: list[Any], inits: list[Any], x: list[int], y: list[int], opset: int) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "unseen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7  # what the onnx checker accepts for every opset used here
    onnx.save(model, str(path))
    return path


def _weight(name: str, shape: tuple[int, ...], seed: int) -> Any:
    from onnx import numpy_helper

    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def _dropout(opset: int, inp: str, out: str) -> Any:
    from onnx import helper

    # Opset 9 exports still list the mask output; newer ones usually drop it.
    outputs = [out, f"{out}_mask"] if opset < 12 else [out]
    return helper.make_node("Dropout", [inp], outputs, name="dropout0")


def relu_dropout(path: Path, opset: int) -> Path:
    from onnx import helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"), _dropout(opset, "r", "y")]
    return _model(path, nodes, [], [1, 3, 8, 8], [1, 3, 8, 8], opset)


def conv_dropout_conv(path: Path, opset: int) -> Path:
    """Conv → Dropout → Relu → Conv: the dropout sits between two converted convs."""
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv0"),
        _dropout(opset, "c", "d"),
        helper.make_node("Relu", ["d"], ["r"], name="relu0"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv1"),
    ]
    inits = [_weight("w1", (8, 3, 3, 3), 0), _weight("w2", (4, 8, 1, 1), 1)]
    return _model(path, nodes, inits, [1, 3, 8, 8], [1, 4, 8, 8], opset)


def convs_into_sum(path: Path) -> Path:
    """Two convs added by ONNX Sum (imported as stack + sum over a 5-D tensor), then a third conv."""
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Conv", ["x", "w2"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
        helper.make_node("Sum", ["a", "b"], ["s"], name="sum0"),
        helper.make_node("Conv", ["s", "w3"], ["y"], name="conv_c"),
    ]
    inits = [_weight("w1", (8, 3, 3, 3), 0), _weight("w2", (8, 3, 3, 3), 1), _weight("w3", (4, 8, 1, 1), 2)]
    return _model(path, nodes, inits, [1, 3, 8, 8], [1, 4, 8, 8], 13)


def _compile_and_check(model: Path, out: Path) -> None:
    """Built for x86_64 and verified against ONNX Runtime (the compile path's own check)."""
    artifact = compile_model(model, "x86_64", out, samples=2)
    verification = load_artifact(artifact.path).manifest.verification
    assert verification is not None and verification.runner == "native"
    assert verification.max_abs_diff <= 1e-4


@pytest.mark.parametrize("opset", [9, 12, 13])
def test_relu_then_dropout_builds_and_verifies(opset: int, tmp_path: Path) -> None:
    _compile_and_check(relu_dropout(tmp_path / "m.onnx", opset), tmp_path / "art")


@pytest.mark.parametrize("opset", [9, 13])
def test_dropout_between_convs_builds_and_verifies(opset: int, tmp_path: Path) -> None:
    _compile_and_check(conv_dropout_conv(tmp_path / "m.onnx", opset), tmp_path / "art")


def test_convs_into_sum_build_and_verify(tmp_path: Path) -> None:
    _compile_and_check(convs_into_sum(tmp_path / "m.onnx"), tmp_path / "art")


def _calls(func: Any) -> list[Any]:
    from tvm import relax

    found: list[Any] = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if isinstance(e, relax.Call) else None)
    return found


def test_ops_without_a_known_layout_rule_keep_their_layout_and_convs_still_convert(tmp_path: Path) -> None:
    """The convs go NHWC; stack and the 5-D sum stay in the imported layout, inside one dataflow block
    (fusion works within blocks), and no helper function of the rewrite is left in the module."""
    from tvm import relax

    from edgecam.compiler.frontends.onnx import load_onnx, to_relax
    from edgecam.compiler.lowering.channels_last import to_channels_last

    mod = to_channels_last(to_relax(load_onnx(convs_into_sum(tmp_path / "m.onnx"))))
    assert [gv.name_hint for gv in mod.get_global_vars()] == ["main"]
    calls = _calls(mod["main"])
    convs = [c for c in calls if getattr(c.op, "name", "") == "relax.nn.conv2d"]
    assert len(convs) == 3 and {str(c.attrs.data_layout) for c in convs} == {"NHWC"}
    (stack,) = [c for c in calls if getattr(c.op, "name", "") == "relax.stack"]
    assert [int(d) for d in stack.ty.shape] == [2, 1, 8, 8, 8]  # stacked NCHW tensors, as imported
    blocks = mod["main"].body.blocks
    assert len(blocks) == 1 and isinstance(blocks[0], relax.DataflowBlock)


def test_expand_to_a_runtime_shape_builds_and_runs() -> None:
    """ONNX Expand to a shape given as an input: its kernel has symbolic extents, which edgecam's
    schedule rules leave to TVM's default schedule instead of failing the build."""
    import tvm
    from onnx import TensorProto, helper

    from edgecam.compiler.frontends.onnx import import_proto
    from edgecam.compiler.targets import create_target

    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"], name="expand0")],
        "expand",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    executable = create_target("x86_64").build(import_proto(model))
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(np.array([3, 4], np.int64))).numpy()
    np.testing.assert_array_equal(got, np.broadcast_to(x, (3, 4)))


def test_a_shape_output_comes_back_as_a_tensor() -> None:
    """ONNX Shape as the model's output: TVM returns a Relax shape value, which the runtime cannot
    hand back; the import makes it an int64 tensor."""
    import tvm
    from onnx import TensorProto, helper

    from edgecam.compiler.frontends.onnx import import_proto
    from edgecam.compiler.targets import create_target

    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["y"], name="shape0")],
        "shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    vm = tvm.relax.VirtualMachine(create_target("x86_64").build(import_proto(model)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(np.zeros((3, 4, 5), np.float32)))
    assert isinstance(got, tvm.runtime.Tensor)
    np.testing.assert_array_equal(got.numpy(), np.array([3, 4, 5], np.int64))


def test_einsum_whose_result_is_the_output_builds_and_runs() -> None:
    """ONNX Einsum imports as a call_tir bound to a var the output aliases; the Clip rewrite's pattern
    matched that var too and took it for a call."""
    import tvm
    from onnx import TensorProto, helper

    from edgecam.compiler.frontends.onnx import import_proto
    from edgecam.compiler.targets import create_target

    graph = helper.make_graph(
        [helper.make_node("Einsum", ["x"], ["y"], equation="ij->ji", name="einsum0")],
        "einsum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    vm = tvm.relax.VirtualMachine(create_target("x86_64").build(import_proto(model)), tvm.cpu())
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x.T)


def test_slice_with_runtime_starts_builds_and_runs() -> None:
    """ONNX Slice whose starts/ends are inputs: TVM's FoldConstant leaves a call of a shape function it
    never adds to the module, so the rewrite keeps the module unfolded there."""
    import tvm
    from onnx import TensorProto, helper

    from edgecam.compiler.frontends.onnx import import_proto
    from edgecam.compiler.targets import create_target

    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, [1]) for n in ("starts", "ends", "axes")]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="slice0")],
        "slice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 4]), *ints],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    vm = tvm.relax.VirtualMachine(create_target("x86_64").build(import_proto(model)), tvm.cpu())
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    args = [tvm.runtime.tensor(np.array([v], np.int64)) for v in (1, 4, 0)]
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x), *args).numpy(), x[1:4])


@pytest.mark.slow
@pytest.mark.parametrize("build", ["convs_into_sum", "conv_dropout_conv"])
def test_the_issue_graphs_build_for_aarch64_and_verify_under_qemu(build: str, tmp_path: Path) -> None:
    """The aarch64 target converts convs channels-last too; its build is verified under qemu-user
    (compiler/targets/arm_emulation.py) where that is installed."""
    from edgecam.compiler.targets import arm_emulation

    if arm_emulation.missing_tools():
        pytest.skip(
            f"needs qemu-user and the aarch64 cross g++: apt-get install {arm_emulation.APT_PACKAGES}"
        )
    model = (
        convs_into_sum(tmp_path / "m.onnx")
        if build == "convs_into_sum"
        else conv_dropout_conv(tmp_path / "m.onnx", 9)
    )
    artifact = compile_model(model, "aarch64", tmp_path / "art", samples=2)
    verification = load_artifact(artifact.path, check_host=False).manifest.verification
    assert verification is not None and verification.runner.startswith("qemu-aarch64")
    assert verification.max_abs_diff <= 1e-4
