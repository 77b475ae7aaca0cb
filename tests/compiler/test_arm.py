"""The aarch64 target cross-compiles a real ARM library that uses NEON and says what cores it needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgecam.compiler.artifact import ArtifactError, load_artifact
from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import UnknownTargetError
from edgecam.compiler.targets import create_target

pytestmark = pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs Debian's gcc-aarch64-linux-gnu"
)
EM_AARCH64 = 183


def test_cross_compiled_library_is_arm_code_with_neon(convnet: Path, tmp_path: Path) -> None:
    artifact = compile_model(convnet, "aarch64", tmp_path / "arm", target_options={"mcpu": "cortex-a55"})
    library = artifact.library_path.read_bytes()
    assert library[:4] == b"\x7fELF"
    assert int.from_bytes(library[18:20], "little") == EM_AARCH64
    manifest = artifact.manifest
    assert manifest.target.arch == "aarch64"
    assert {"asimd", "asimddp"} <= set(manifest.target.cpu_features)  # A55: NEON and dot product
    assert manifest.verification is None  # cannot run ARM code on this host; said, not faked
    disassembly = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(artifact.library_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    vector_ops = sum(
        1 for line in disassembly.splitlines() if ".4s" in line and ("fmla" in line or "fmul" in line)
    )
    assert vector_ops > 10, "expected NEON float32x4 arithmetic in the convolution kernels"


def test_cortex_a53_needs_no_dot_product(convnet: Path, tmp_path: Path) -> None:
    info = create_target("aarch64", mcpu="cortex-a53").info()
    assert "asimd" in info.cpu_features and "asimddp" not in info.cpu_features


def test_this_x86_host_refuses_the_arm_artifact(convnet: Path, tmp_path: Path) -> None:
    compile_model(convnet, "aarch64", tmp_path / "arm")
    with pytest.raises(ArtifactError) as caught:
        load_artifact(tmp_path / "arm")
    assert caught.value.check == "target" and "aarch64" in str(caught.value)


def test_unknown_core_lists_camera_cores(convnet: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownTargetError) as caught:
        compile_model(convnet, "aarch64", tmp_path / "arm", target_options={"mcpu": "cortex-z9"})
    assert "cortex-z9" in str(caught.value) and "cortex-a55" in str(caught.value)
