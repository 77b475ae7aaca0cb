"""The aarch64 target cross-compiles a real ARM library that uses NEON and says what cores it needs.

These tests see a host without qemu; test_arm_qemu.py (slow) runs the libraries under it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from arm_int8 import dot_steps, exact_conv, exact_dense, instructions
from test_qdq_to_integer import relax_module

from edgecam.compiler import artifact as artifact_module
from edgecam.compiler.artifact import ArtifactError, check_host_can_run, load_artifact
from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import EmulatorError, InvalidOptionError, UnknownTargetError
from edgecam.compiler.lowering.packed_gemm import Dot
from edgecam.compiler.targets import arm, arm_dots, arm_emulation, create_target

pytestmark = pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs Debian's gcc-aarch64-linux-gnu"
)
EM_AARCH64 = 183
# An Advanced SIMD (NEON) instruction on vector registers, e.g. "fmla v1.4s, v2.4s, v3.s[0]".
SIMD = re.compile(r"^\s*[0-9a-f]+:\s+[0-9a-f]{8}\s+(\w+)\s+v\d+\.(?:16b|8b|8h|4h|4s|2s|2d)\b")


@pytest.fixture
def no_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arm_emulation, "missing_tools", lambda: [arm_emulation.QEMU[0]])


@pytest.mark.usefixtures("no_emulator")
def test_cross_compiled_library_is_arm_code_with_neon(convnet: Path, tmp_path: Path) -> None:
    artifact = compile_model(convnet, "aarch64", tmp_path / "arm", target_options={"mcpu": "cortex-a55"})
    library = artifact.library_path.read_bytes()
    assert library[:4] == b"\x7fELF"
    assert int.from_bytes(library[18:20], "little") == EM_AARCH64
    manifest = artifact.manifest
    assert manifest.target.arch == "aarch64"
    assert {"asimd", "asimddp"} <= set(manifest.target.cpu_features)  # A55: NEON and dot product
    assert manifest.verification is None  # no qemu: cannot run ARM code on this host; said, not faked
    disassembly = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(artifact.library_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    simd = [match[1] for line in disassembly.splitlines() if (match := SIMD.match(line))]
    assert len(simd) > 100, "expected NEON vector code"
    assert simd.count("fmla") > 10, "expected NEON fused multiply-adds in the convolution kernels"


def test_cortex_a53_needs_no_dot_product(convnet: Path, tmp_path: Path) -> None:
    info = create_target("aarch64", mcpu="cortex-a53").info()
    assert "asimd" in info.cpu_features and "asimddp" not in info.cpu_features


@pytest.mark.usefixtures("no_emulator")
def test_this_x86_host_refuses_the_arm_artifact(convnet: Path, tmp_path: Path) -> None:
    compile_model(convnet, "aarch64", tmp_path / "arm")
    with pytest.raises(ArtifactError) as caught:
        load_artifact(tmp_path / "arm")
    assert caught.value.check == "target" and "aarch64" in str(caught.value)


def test_unknown_core_lists_camera_cores(convnet: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownTargetError) as caught:
        compile_model(convnet, "aarch64", tmp_path / "arm", target_options={"mcpu": "cortex-z9"})
    assert "cortex-z9" in str(caught.value) and "cortex-a55" in str(caught.value)


def test_without_qemu_running_arm_code_names_the_debian_packages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(arm_emulation.shutil, "which", lambda name: None)
    assert create_target("aarch64").library_runner() is None  # compile_model then writes it unverified
    with pytest.raises(EmulatorError) as caught:
        arm_emulation.run_library(tmp_path / "model.so", [], ["image"])
    assert "apt-get install qemu-user-static g++-aarch64-linux-gnu" in str(caught.value)


def test_qemu_emulates_the_target_core_when_it_models_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arm_emulation, "_qemu_cpus", lambda: frozenset({"cortex-a53", "cortex-a76", "max"}))
    assert arm_emulation.qemu_cpu("cortex-a53", []) == "cortex-a53"  # dot product would fault, as on an A53
    assert arm_emulation.qemu_cpu("cortex-a55", []) == "max"  # qemu has no A55
    assert arm_emulation.qemu_cpu("cortex-a76", ["+dotprod"]) == "max"  # features added beyond the core
    assert arm_emulation.qemu_cpu("cortex-a76", ["-neon"]) == "cortex-a76"


def test_an_unknown_feature_lists_the_valid_ones() -> None:
    for bad in (["+dotprd"], ["dotprod"], ["+neon", "-sve3"]):
        with pytest.raises(InvalidOptionError) as caught:
            create_target("aarch64", mcpu="cortex-a55", mattr=bad)
        message = str(caught.value)
        assert repr(bad[-1]) in message and "+dotprod" in message and "+i8mm" in message


def test_every_feature_the_target_accepts_is_one_llvm_enables() -> None:
    """A name LLVM did not know would be ignored (with a warning) and the core's code built without it."""
    from tvm.target import codegen

    for feature in arm.LLVM_TO_CPUINFO:
        target = create_target("aarch64", mcpu="cortex-a53", mattr=[f"+{feature}"]).tvm_target()
        assert feature in set(codegen.llvm_get_cpu_features(target)), feature


@pytest.mark.parametrize(
    ("options", "activations", "dot"),
    [
        ({"mcpu": "cortex-a53"}, "uint8", arm_dots.SMULL_SADALP),  # no dot product: widening steps
        ({"mcpu": "cortex-a72"}, "uint8", arm_dots.SMULL_SADALP),
        ({"mcpu": "cortex-a72"}, "int8", arm_dots.SMULL_SADALP_S8),
        ({"mcpu": "cortex-a55"}, "uint8", arm_dots.SDOT),  # ARMv8.2 dot product
        ({"mcpu": "cortex-a76"}, "int8", arm_dots.SDOT_S8),
        ({"mcpu": "cortex-a53", "mattr": ["+dotprod"]}, "uint8", arm_dots.SDOT),
        ({"mcpu": "cortex-a76", "mattr": ["+i8mm"]}, "uint8", arm_dots.USDOT),  # ARMv8.6 mixed-sign dot
        ({"mcpu": "cortex-a76", "mattr": ["-dotprod"]}, "uint8", arm_dots.SMULL_SADALP),
    ],
    ids=lambda v: "+".join([v["mcpu"], *v.get("mattr", [])]) if isinstance(v, dict) else str(v),
)
def test_each_core_computes_int8_layers_with_its_step(
    tmp_path: Path, options: dict[str, Any], activations: str, dot: Dot
) -> None:
    """The convs and the dense layer are packed GEMMs of the step, and the library contains its
    instructions (at least one per GEMM's inner loop) and not the other steps' dot instructions."""
    target = create_target("aarch64", **options)
    for model in (
        exact_conv(tmp_path / "conv.onnx", activations),
        exact_dense(tmp_path / "fc.onnx", activations),
    ):
        prepared = target.prepare(relax_module(model))
        layers = 2 if model.stem == "conv" else 1
        assert dot_steps(prepared) == [dot.intrinsic] * layers
        library = tmp_path / target.export(target.build(relax_module(model)), tmp_path)
        counts = instructions(library)
        for instruction in arm_dots.INSTRUCTIONS[dot]:
            assert counts[instruction] >= layers, (instruction, counts)
        others = {"sdot", "usdot"} - set(arm_dots.INSTRUCTIONS[dot])
        assert not any(counts[name] for name in others), counts


A53_CPUINFO_FEATURES = {"fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"}


def test_a_camera_without_dot_product_refuses_the_artifact_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An artifact whose library uses sdot, on a Cortex-A53 (its /proc/cpuinfo Features line):
    refused at load with the missing feature named, before any code runs."""
    model = exact_conv(tmp_path / "conv.onnx", "uint8")
    target = create_target("aarch64", mcpu="cortex-a55")
    library = tmp_path / target.export(target.build(relax_module(model)), tmp_path)
    assert instructions(library)["sdot"] > 0
    monkeypatch.setattr(artifact_module.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(artifact_module, "host_cpu_features", lambda: A53_CPUINFO_FEATURES)
    with pytest.raises(ArtifactError) as caught:
        check_host_can_run(target.info())
    assert caught.value.check == "cpu_features" and "asimddp" in str(caught.value)
    check_host_can_run(create_target("aarch64", mcpu="cortex-a53").info())  # its own build loads
