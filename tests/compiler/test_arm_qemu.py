"""aarch64 libraries run under qemu-user on this x86 host (compiler/targets/arm_emulation.py) and match
ONNX Runtime: compile_model verifies them that way, and they agree on real Fashion-MNIST images.

Slow (each build cross-compiles; emulation is 10-50x slower than native) and needs
`apt-get install qemu-user-static g++-aarch64-linux-gnu`; the first run downloads the aarch64 TVM
runtime wheels into ~/.cache/edgecam/aarch64-runner.
"""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from arm_int8 import dot_steps, exact_conv, exact_dense, feeds, instructions
from test_qdq_to_integer import relax_module, run_ort

from edgecam.compiler import verify
from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import EmulatorError
from edgecam.compiler.frontends.onnx import load_onnx
from edgecam.compiler.lowering.packed_gemm import Dot
from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
from edgecam.compiler.targets import arm_dots, arm_emulation, create_target
from edgecam.models.fashion_cnn import load_samples, onnx_path
from edgecam.preprocessing import preprocess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(platform.machine() == "aarch64", reason="this host runs aarch64 code natively"),
    pytest.mark.skipif(
        bool(arm_emulation.missing_tools()),
        reason=f"needs qemu-user and the aarch64 cross g++: apt-get install {arm_emulation.APT_PACKAGES}",
    ),
]
REAL_IMAGES = 16


@pytest.mark.parametrize(
    ("options", "emulated"),
    [
        ({"mcpu": "cortex-a53"}, "qemu-aarch64 -cpu cortex-a53"),
        ({"mcpu": "cortex-a76", "mattr": ["+dotprod"]}, "qemu-aarch64 -cpu max"),
    ],
    ids=["cortex-a53", "cortex-a76+dotprod"],
)
def test_bundled_cnn_under_qemu_matches_onnxruntime_on_real_images(
    options: dict[str, Any], emulated: str, tmp_path: Path
) -> None:
    artifact = compile_model(onnx_path(), "aarch64", tmp_path / "arm", target_options=options)

    verification = artifact.manifest.verification
    assert verification is not None, "compile_model should have verified under qemu"
    assert verification.runner == emulated
    assert verification.max_abs_diff <= verify.FLOAT_TOLERANCE

    spec = load_onnx(onnx_path()).preprocessing
    images, _ = load_samples()
    feeds = [{"image": preprocess(image, spec)} for image in images[:REAL_IMAGES]]
    runner = create_target("aarch64", **options).library_runner()
    assert runner is not None
    got = runner.run(artifact.library_path, feeds, ["image"], (), None)
    expected = verify.run_onnxruntime(onnx_path(), feeds)
    assert verify.max_difference(got, expected) <= 1e-4
    assert [out[0].argmax() for out in got] == [out[0].argmax() for out in expected]


@pytest.mark.parametrize(
    ("mcpu", "activations", "integer_simd"),
    [
        ("cortex-a53", "uint8", {"smull", "sadalp"}),  # widening multiply, pairwise accumulate
        ("cortex-a55", "uint8", {"sdot"}),  # ARMv8.2 dot product: four int8 products per lane
        ("cortex-a55", "int8", {"sdot"}),
    ],
)
def test_int8_cnn_under_qemu_matches_onnxruntimes_exact_int8_kernels(
    mcpu: str, activations: str, integer_simd: set[str], tmp_path: Path
) -> None:
    """The bundled CNN through the int8 pass (calibrated on a few real images), built for aarch64 with
    its layers in integers, run under qemu on other real images: within one output quantization step of
    ONNX Runtime with edgecam's session options (exact int32 sums), in integer NEON code."""
    spec = load_onnx(onnx_path()).preprocessing
    images, _ = load_samples()
    feeds = [{"image": preprocess(image, spec)} for image in images[: REAL_IMAGES + 32]]
    quantized = create_pass(parse_pass_config({"kind": "int8", "activation_type": activations})).apply(
        onnx.load(str(onnx_path())), PassContext(feeds[REAL_IMAGES:], tmp_path / "work")
    )
    model = tmp_path / "int8.onnx"
    onnx.save(quantized.model, str(model))

    artifact = compile_model(model, "aarch64", tmp_path / "arm", target_options={"mcpu": mcpu}, samples=2)

    assert artifact.manifest.verification is not None
    assert artifact.manifest.verification.runner.startswith("qemu-aarch64")
    runner = create_target("aarch64", mcpu=mcpu).library_runner()
    assert runner is not None
    got = runner.run(artifact.library_path, feeds[:REAL_IMAGES], ["image"], (), None)
    expected = verify.run_onnxruntime(model, feeds[:REAL_IMAGES])
    # The int8 pass leaves the logits float: their step is what 8 bits over their range would give.
    step = verify.model_tolerance(quantized.model, expected).loosest / verify.QUANTIZED_STEPS
    assert verify.max_difference(got, expected) <= step
    assert [out[0].argmax() for out in got] == [out[0].argmax() for out in expected]

    counts = instructions(artifact.library_path)
    for name in integer_simd:  # the packed GEMMs' steps (test_arm), in every layer's inner loop
        assert counts[name] >= 3, f"expected {name} in the layers: {counts}"


def test_a_mobilenet_block_under_qemu_matches_onnxruntime(tmp_path: Path) -> None:
    """An inverted residual block on a 7×7 map, as MobileNetV2 ends: 1×1 expand and 1×1 project +
    residual (packed GEMMs, tiled for NEON: 7 positions × 2 vectors of 4), 3×3 depthwise between."""
    from convnets import save_graph
    from onnx import helper, numpy_helper
    from tvm.relax.frontend.onnx import from_onnx

    rng = np.random.default_rng(0)

    def weights(name: str, *shape: int) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    inits = [weights("w0", 16, 3, 1, 1), weights("w1", 48, 16, 1, 1), weights("w2", 48, 1, 3, 3)]
    inits += [weights("w3", 16, 48, 1, 1)]
    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["s"]),  # 3 → 16 channels: the block's input
        helper.make_node("Conv", ["s", "w1"], ["e"]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["er"]),
        helper.make_node("Conv", ["er", "w2"], ["d"], group=48, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d", "lo", "hi"], ["dr"]),
        helper.make_node("Conv", ["dr", "w3"], ["p"]),
        helper.make_node("Add", ["p", "s"], ["y"]),
    ]
    model = save_graph(tmp_path / "block.onnx", nodes, [1, 3, 7, 7], [1, 16, 7, 7], inits)
    imported = from_onnx(onnx.load(str(model)), keep_params_in_input=False)
    prepared = create_target("aarch64", mcpu="cortex-a53").prepare(imported)
    assert len(re.findall(r"R\.call_tir\(packed_gemm\d*,", prepared["main"].script())) == 3

    artifact = compile_model(model, "aarch64", tmp_path / "arm", target_options={"mcpu": "cortex-a53"})

    verification = artifact.manifest.verification
    assert verification is not None and verification.runner == "qemu-aarch64 -cpu cortex-a53"
    assert verification.max_abs_diff <= verify.FLOAT_TOLERANCE


def test_coded_weights_and_their_transform_run_under_qemu(convnet: Path, tmp_path: Path) -> None:
    """The library takes its weights as arguments and runs main_transform_params on them first."""
    shared = create_pass(parse_pass_config({"kind": "weight_sharing", "bits": 4})).apply(
        onnx.load(str(convnet)), PassContext([], tmp_path / "work")
    )
    assert shared.coding is not None
    onnx.save(shared.model, str(tmp_path / "shared.onnx"))

    artifact = compile_model(
        tmp_path / "shared.onnx", "aarch64", tmp_path / "arm", weight_coding=shared.coding
    )

    manifest = artifact.manifest
    assert manifest.coded_weights is not None and manifest.coded_weights.transform is not None
    assert manifest.verification is not None
    assert manifest.verification.runner.startswith("qemu-aarch64")
    assert manifest.verification.max_abs_diff <= verify.FLOAT_TOLERANCE


def test_a_file_that_is_no_library_fails_with_the_runtime_error(tmp_path: Path) -> None:
    (tmp_path / "model.so").write_bytes(b"not a shared library")
    with pytest.raises(EmulatorError) as caught:
        arm_emulation.run_library(
            tmp_path / "model.so", [{"image": np.zeros((1, 1, 28, 28), np.float32)}], ["image"]
        )
    assert "failed under qemu-aarch64" in str(caught.value) and "model.so" in str(caught.value)


def test_an_instruction_the_emulated_core_lacks_is_reported(tmp_path: Path) -> None:
    """A library using dot product (ARMv8.2) faults on an emulated Cortex-A53, as on that camera."""
    source = tmp_path / "dot.c"
    source.write_text(
        "__attribute__((constructor)) static void use_dot_product(void) {\n"
        '  __asm__ volatile("sdot v0.4s, v1.16b, v2.16b" ::: "v0");\n'
        "}\n"
    )
    library = tmp_path / "model.so"
    subprocess.run(
        [
            "aarch64-linux-gnu-gcc",
            "-march=armv8.2-a+dotprod",
            "-shared",
            "-fPIC",
            "-o",
            str(library),
            str(source),
        ],
        check=True,
    )
    with pytest.raises(EmulatorError) as caught:
        arm_emulation.run_library(library, [], ["image"], cpu="cortex-a53")
    assert "instruction the emulated CPU (cortex-a53) does not have" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "activations", "emulated", "dot"),
    [
        ({"mcpu": "cortex-a53"}, "uint8", "cortex-a53", arm_dots.SMULL_SADALP),
        ({"mcpu": "cortex-a72"}, "int8", "cortex-a72", arm_dots.SMULL_SADALP_S8),
        ({"mcpu": "cortex-a76"}, "uint8", "cortex-a76", arm_dots.SDOT),
        ({"mcpu": "cortex-a76"}, "int8", "cortex-a76", arm_dots.SDOT_S8),
        ({"mcpu": "cortex-a76", "mattr": ["+i8mm"]}, "uint8", "max", arm_dots.USDOT),
    ],
    ids=["a53-smull", "a72-smull-s8", "a76-sdot", "a76-sdot-s8", "a76+i8mm-usdot"],
)
def test_each_step_is_bit_exact_against_onnxruntimes_exact_int8_under_qemu(
    tmp_path: Path, options: dict[str, Any], activations: str, emulated: str, dot: Dot
) -> None:
    """A strided, padded 3×3 conv (its channels padded to whole groups), a 1×1 conv and a dense layer
    whose outputs are their int32 sums, on inputs across the whole 8-bit range and full-range weights:
    under qemu emulating a core with the step's feature, the same numbers as ONNX Runtime to the bit.
    A dot-product library on an emulated core without it (Cortex-A53) faults, and is reported."""
    target = create_target("aarch64", **options)
    runner = target.library_runner()
    assert runner is not None and runner.where == f"qemu-aarch64 -cpu {emulated}"
    for model, shape in (
        (exact_conv(tmp_path / "conv.onnx", activations), [1, 6, 9, 9]),
        (exact_dense(tmp_path / "fc.onnx", activations), [1, 60]),
    ):
        module = relax_module(model)
        assert set(dot_steps(target.prepare(module))) == {dot.intrinsic}
        library = tmp_path / target.export(target.build(module), tmp_path)
        assert all(instructions(library)[name] for name in arm_dots.INSTRUCTIONS[dot])
        inputs = feeds(shape, 3, seed=len(shape))
        got = np.stack([out[0] for out in runner.run(library, inputs, ["x"], (), None)])
        expected = run_ort(model, inputs)
        assert np.abs(expected).max() > 1e5  # sums far past 16 bits: an overflow would show
        np.testing.assert_array_equal(got, expected)
        if arm_dots.NEEDS[dot] != "neon":
            with pytest.raises(EmulatorError, match=r"instruction the emulated CPU \(cortex-a53\)"):
                arm_emulation.run_library(library, inputs[:1], ["x"], cpu="cortex-a53")


@pytest.fixture
def mobilenet_v2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Any]:
    """bench/shapes.py's MobileNetV2 (224×224, random weights) through the int8 pass, calibrated on a
    few random images: (the int8 model, the pass's result)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    import shapes

    source = shapes.mobilenet_v2(seed=3)
    rng = np.random.default_rng(0)
    calibration = [{"image": rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
    quantized = create_pass(parse_pass_config({"kind": "int8"})).apply(
        source, PassContext(calibration, tmp_path / "work")
    )
    onnx.save(quantized.model, str(tmp_path / "mobilenet_v2-int8.onnx"))
    return tmp_path / "mobilenet_v2-int8.onnx", quantized


@pytest.mark.parametrize(
    ("mcpu", "dot"), [("cortex-a53", arm_dots.SMULL_SADALP), ("cortex-a55", arm_dots.SDOT)]
)
def test_int8_mobilenet_v2_under_qemu_uses_the_cores_step_and_matches_onnxruntime(
    mobilenet_v2: tuple[Path, Any], tmp_path: Path, mcpu: str, dot: Dot
) -> None:
    """Every 1×1 conv, the stem and the classifier are packed GEMMs of the core's step (the depthwise
    convs keep RegisterTiles), and compile_model's verification under qemu passes."""
    model, _ = mobilenet_v2
    target = create_target("aarch64", mcpu=mcpu)
    prepared = target.prepare(relax_module(model))
    assert set(dot_steps(prepared)) == {dot.intrinsic}  # each GEMM shape's kernel
    # stem + 33 pointwise convs (the first block has no expansion) + head conv + classifier
    assert len(re.findall(r"R\.call_tir\(packed_gemm\d*,", prepared["main"].script())) == 36

    artifact = compile_model(model, "aarch64", tmp_path / "arm", target_options={"mcpu": mcpu}, samples=1)

    verification = artifact.manifest.verification
    assert verification is not None and verification.runner.startswith("qemu-aarch64")
    assert verification.max_abs_diff <= verification.tolerance
    counts = instructions(artifact.library_path)
    for name in arm_dots.INSTRUCTIONS[dot]:
        assert counts[name] >= len(dot_steps(prepared)), counts  # one or more per GEMM kernel
