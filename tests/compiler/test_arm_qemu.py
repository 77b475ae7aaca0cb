"""aarch64 libraries run under qemu-user on this x86 host (compiler/targets/arm_emulation.py) and match
ONNX Runtime: compile_model verifies them that way, and they agree on real Fashion-MNIST images.

Slow (each build cross-compiles; emulation is 10-50x slower than native) and needs
`apt-get install qemu-user-static g++-aarch64-linux-gnu`; the first run downloads the aarch64 TVM
runtime wheels into ~/.cache/edgecam/aarch64-runner.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edgecam.compiler import verify
from edgecam.compiler.build import DEFAULT_TOLERANCE, compile_model
from edgecam.compiler.errors import EmulatorError
from edgecam.compiler.frontends.onnx import load_onnx
from edgecam.compiler.passes import PassContext, create_pass, parse_pass_config
from edgecam.compiler.targets import arm_emulation, create_target
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
    assert verification.max_abs_diff <= DEFAULT_TOLERANCE

    spec = load_onnx(onnx_path()).preprocessing
    images, _ = load_samples()
    feeds = [{"image": preprocess(image, spec)} for image in images[:REAL_IMAGES]]
    runner = create_target("aarch64", **options).library_runner()
    assert runner is not None
    got = runner.run(artifact.library_path, feeds, ["image"], (), None)
    expected = verify.run_onnxruntime(onnx_path(), feeds)
    assert verify.max_difference(got, expected) <= 1e-4
    assert [out[0].argmax() for out in got] == [out[0].argmax() for out in expected]


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
    assert manifest.verification.max_abs_diff <= DEFAULT_TOLERANCE


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
