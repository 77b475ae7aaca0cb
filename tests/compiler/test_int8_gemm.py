"""int8 convs and dense layers as packed GEMMs of integer dot-product steps (compiler/lowering/
packed_gemm.py, compiler/targets/x86_dots.py, the PackedGemm schedule): the packed layout, which step
each target and layer gets, the instructions in the code, and the numbers against ONNX Runtime's
exact int8 kernels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from convnets import save_graph
from test_qdq_to_integer import output_step, qdq, relax_module, run_ort

from edgecam.compiler.artifact import host_cpu_features
from edgecam.compiler.lowering.packed_gemm import COMPUTE, Tile, pack
from edgecam.compiler.targets import arm_dots, create_target, x86_dots


def quantized_net(tmp_path: Path, reduce_range: bool = False) -> Path:
    """Conv 3×3 (8 → 16, pad 1) → Relu → Conv 1×1 (16 → 32) on 1×8×10×10, through quantize_static
    (per-channel int8 weights, 7-bit with `reduce_range`, uint8 activations)."""
    from onnx import helper, numpy_helper

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
    return qdq(source, tmp_path / "int8.onnx", feeds(16, seed=1), reduce_range=reduce_range)


def feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1, 1, size=(1, 8, 10, 10)).astype(np.float32)} for _ in range(count)]


def quantized_dense(tmp_path: Path) -> Path:
    """MatMul [1, 64] × [64, 48] through quantize_static."""
    from onnx import helper, numpy_helper

    weights = (np.random.default_rng(3).standard_normal((64, 48)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    source = save_graph(
        tmp_path / "dense.onnx", nodes, [1, 64], [1, 48], [numpy_helper.from_array(weights, "w")]
    )
    rng = np.random.default_rng(4)
    calibration = [{"x": rng.uniform(-1, 1, (1, 64)).astype(np.float32)} for _ in range(8)]
    return qdq(source, tmp_path / "dense-int8.onnx", calibration)


def packed_gemms(mod: Any) -> list[str]:
    """The dot-product step of each integer packed GEMM of `mod`."""
    from tvm import tirx

    steps = []
    for gv, func in mod.functions.items():
        if gv.name_hint.startswith(COMPUTE) and isinstance(func, tirx.PrimFunc):
            script = func.script()
            dots = [d.intrinsic for d in (*x86_dots.DOTS, *arm_dots.DOTS) if f'"{d.intrinsic}"' in script]
            steps += dots
    return steps


def test_dot_weights_are_packed_group_by_group_per_output_channel() -> None:
    weights = np.arange(3 * 3 * 6 * 16, dtype=np.int64).reshape(3, 3, 6, 16).astype(np.int8)  # HWIO
    for dot, dtype in ((x86_dots.VPMADDUBSW, np.int8), (x86_dots.VPMADDWD, np.int16)):
        packed = pack(weights, Tile(positions=2, channels=8), dot)
        groups = -(-6 // dot.group)
        # [outputs / NR, KH, KW, channels / group, NR, group], channels padded to whole groups
        assert packed.shape == (2, 3, 3, groups, 8, dot.group) and packed.dtype == dtype
        for block, ky, kx, channel, out in ((0, 2, 1, 5, 3), (1, 0, 2, 2, 7)):
            group, lane = divmod(channel, dot.group)
            assert packed[block, ky, kx, group, out, lane] == weights[ky, kx, channel, 8 * block + out]
        assert not packed[:, :, :, -1, :, 6 - (groups - 1) * dot.group :].any()  # padding: zeros


def test_a_dot_takes_only_weights_it_computes_exactly() -> None:
    # vpmaddubsw adds two uint8 × int8 products in int16: exact while |w| ≤ 64 (255 · 128 < 2^15).
    assert x86_dots.VPMADDUBSW.fits(np.array([64, -64, 3], np.int8))
    assert not x86_dots.VPMADDUBSW.fits(np.array([65, 0], np.int8))
    assert not x86_dots.VPMADDUBSW.fits(np.array([-128], np.int8))
    assert x86_dots.VPMADDWD.fits(np.array([-128, 127], np.int8))


@pytest.mark.parametrize(
    ("target", "mcpu", "reduce_range", "steps"),
    [
        ("x86_64", "znver4", False, [x86_dots.VPDPBUSD.intrinsic] * 2),
        ("x86_64", "icelake-server", False, [x86_dots.VPDPBUSD.intrinsic] * 2),
        ("x86_64", "alderlake", False, [x86_dots.VPDPBUSD_YMM.intrinsic] * 2),  # AVX-VNNI, no AVX-512
        ("x86_64", "alderlake", True, [x86_dots.VPDPBUSD_YMM.intrinsic] * 2),
        ("x86_64", "x86-64-v3", False, [x86_dots.VPMADDWD.intrinsic] * 2),
        ("x86_64", "x86-64-v3", True, [x86_dots.VPMADDUBSW.intrinsic] * 2),
        ("x86_64", "x86-64-v2", False, []),  # SSE4.2 only: no dot step, RegisterTiles' code
        ("aarch64", "cortex-a55", False, [arm_dots.SDOT.intrinsic] * 2),  # test_arm: the other cores
    ],
)
def test_each_target_computes_int8_layers_with_its_fastest_exact_step(
    tmp_path: Path, target: str, mcpu: str, reduce_range: bool, steps: list[str]
) -> None:
    builder = create_target(target, mcpu=mcpu)
    prepared = builder.prepare(relax_module(quantized_net(tmp_path, reduce_range)))
    assert sorted(packed_gemms(prepared)) == steps
    text = prepared["main"].script()
    assert "R.nn.conv2d" not in text if steps else "R.nn.conv2d" in text


@pytest.mark.parametrize(
    ("mcpu", "reduce_range", "instructions"),
    [
        ("znver4", False, ("vpdpbusd",)),  # building needs no VNNI on this host; only running does
        ("alderlake", False, ("{vex} vpdpbusd",)),  # AVX-VNNI's VEX form, on ymm registers
        ("x86-64-v3", False, ("vpmaddwd", "vpmovzxbw")),
        ("x86-64-v3", True, ("vpmaddubsw", "vpmaddwd")),
    ],
)
def test_the_built_code_uses_the_dot_product_instructions(
    tmp_path: Path, mcpu: str, reduce_range: bool, instructions: tuple[str, ...]
) -> None:
    import subprocess

    executable = create_target("x86_64", mcpu=mcpu).build(relax_module(quantized_net(tmp_path, reduce_range)))
    library = tmp_path / "model.so"
    executable.export_library(str(library))
    assembly = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, check=True)
    for instruction in instructions:
        assert assembly.stdout.count(instruction) >= 2  # at least one in each GEMM's inner loop


def _matches_onnxruntime(model: Path, mcpu: str | None, inputs: list[dict[str, np.ndarray]]) -> None:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    options = {"mcpu": mcpu} if mcpu else {}
    executable = create_target("x86_64", **options).build(relax_module(model))
    vm = VirtualMachine(executable, tvm.cpu())
    got = np.stack([vm["main"](tvm.runtime.tensor(f["x"])).numpy() for f in inputs])

    difference = np.abs(got - run_ort(model, inputs)) / output_step(model)

    assert difference.max() <= 1.0 + 1e-4
    assert np.mean(difference > 0.5) < 0.05  # off by a step only at rare rounding ties


@pytest.mark.skipif("avx2" not in host_cpu_features(), reason="running AVX2 code needs an AVX2 CPU")
@pytest.mark.parametrize("reduce_range", [False, True])
def test_the_avx2_builds_match_onnxruntime_within_one_step(tmp_path: Path, reduce_range: bool) -> None:
    _matches_onnxruntime(quantized_net(tmp_path, reduce_range), "x86-64-v3", feeds(8, seed=2))


@pytest.mark.skipif("avx2" not in host_cpu_features(), reason="running AVX2 code needs an AVX2 CPU")
def test_an_int8_dense_layer_is_a_packed_gemm_too(tmp_path: Path) -> None:
    model = quantized_dense(tmp_path)
    prepared = create_target("x86_64", mcpu="x86-64-v3").prepare(relax_module(model))
    assert packed_gemms(prepared) == [x86_dots.VPMADDWD.intrinsic]
    rng = np.random.default_rng(5)
    _matches_onnxruntime(model, "x86-64-v3", [{"x": rng.uniform(-1, 1, (1, 64)).astype(np.float32)}])


@pytest.mark.skipif("avx512_vnni" not in host_cpu_features(), reason="running VNNI code needs a VNNI CPU")
def test_the_vnni_build_matches_onnxruntime_within_one_step(tmp_path: Path) -> None:
    _matches_onnxruntime(quantized_net(tmp_path), None, feeds(8, seed=2))  # this host's CPU: VNNI


@pytest.mark.skipif("avx_vnni" not in host_cpu_features(), reason="running AVX-VNNI code needs such a CPU")
def test_the_avx_vnni_build_matches_onnxruntime_within_one_step(tmp_path: Path) -> None:
    _matches_onnxruntime(quantized_net(tmp_path), "alderlake", feeds(8, seed=2))
