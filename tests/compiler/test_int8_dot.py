"""int8 convolutions on VNNI (compiler/lowering/int8_dot.py + RegisterTiles): the packed layout, which
targets get it, the vpdpbusd in the code, and the numbers against ONNX Runtime's int8 kernels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from convnets import save_graph
from test_qdq_to_integer import _Reader, output_step, relax_module, run_ort

from edgecam.compiler.artifact import host_cpu_features
from edgecam.compiler.lowering import int8_dot
from edgecam.compiler.targets import create_target


def quantized_net(tmp_path: Path) -> Path:
    """Conv 3×3 (8 → 16, pad 1) → Relu → Conv 1×1 (16 → 32) on 1×8×10×10, through quantize_static
    (per-channel int8 weights, uint8 activations)."""
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((32, 16, 1, 1)) * 0.3).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    source = save_graph(tmp_path / "fp32.onnx", nodes, [1, 8, 10, 10], [1, 32, 10, 10], inits)
    target = tmp_path / "int8.onnx"
    quantize_static(
        str(source),
        str(target),
        _Reader(feeds(16, seed=1)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return target


def feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, size=(1, 8, 10, 10)).astype(np.float32)} for _ in range(count)]


def packed_convs(mod: Any) -> int:
    return sum(gv.name_hint.startswith(int8_dot.COMPUTE) for gv in mod.functions)


def test_weights_are_packed_four_input_channels_per_output_channel() -> None:
    weights = np.arange(3 * 3 * 6 * 16, dtype=np.int64).reshape(3, 3, 6, 16).astype(np.int8)  # HWIO
    packed = int8_dot._pack(weights)
    assert packed.shape == (3, 3, 2, 16, 4)  # 6 input channels → 2 groups of 4, padded
    for group, lane, out in ((0, 3, 5), (1, 1, 15)):
        assert packed[2, 1, group, out, lane] == weights[2, 1, 4 * group + lane, out]
    assert not packed[:, :, 1, :, 2:].any()  # channels 6 and 7 do not exist: zero weights


@pytest.mark.parametrize(
    ("target", "mcpu", "packed", "layout"),
    [
        ("x86_64", "znver4", 2, "NHWC"),
        ("x86_64", "icelake-server", 2, "NHWC"),
        ("x86_64", "x86-64-v3", 0, "NHWC"),  # integer register tiles, no dot product
        ("aarch64", "cortex-a55", 0, "NCHW"),  # LLVM's sdot code for the NCHW loop (test_arm_qemu)
    ],
)
def test_only_vnni_targets_get_packed_convs(
    tmp_path: Path, target: str, mcpu: str, packed: int, layout: str
) -> None:
    builder = create_target(target, mcpu=mcpu)
    assert int8_dot.has_vnni(builder.tvm_target()) == bool(packed)
    prepared = builder.prepare(relax_module(quantized_net(tmp_path)))
    assert packed_convs(prepared) == packed
    text = prepared["main"].script()
    assert f'data_layout="{layout}"' in text or (packed and "R.nn.conv2d" not in text)


def test_a_vnni_build_computes_with_vpdpbusd(tmp_path: Path) -> None:
    # Building needs no VNNI on this host; only running does.
    executable = create_target("x86_64", mcpu="znver4").build(relax_module(quantized_net(tmp_path)))
    library = tmp_path / "model.so"
    executable.export_library(str(library))
    import subprocess

    assembly = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, check=True)
    assert assembly.stdout.count("vpdpbusd") >= 2  # at least one in each packed conv's inner loop


@pytest.mark.skipif("avx512_vnni" not in host_cpu_features(), reason="running VNNI code needs a VNNI CPU")
def test_the_vnni_build_matches_onnxruntime_within_one_step(tmp_path: Path) -> None:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    model = quantized_net(tmp_path)
    executable = create_target("x86_64").build(relax_module(model))  # this host's CPU: VNNI
    vm = VirtualMachine(executable, tvm.cpu())
    inputs = feeds(8, seed=2)
    got = np.stack([vm["main"](tvm.runtime.tensor(f["x"])).numpy() for f in inputs])

    difference = np.abs(got - run_ort(model, inputs)) / output_step(model)

    assert difference.max() <= 1.0 + 1e-4
    assert np.mean(difference > 0.5) < 0.05  # off by a step only at rare rounding ties
