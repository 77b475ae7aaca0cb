"""The CUDA target builds without a GPU; the artifact says what it needs and GPU-less hosts refuse it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecam.compiler.artifact import ArtifactError, load_artifact
from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import UnknownTargetError


def test_cuda_artifact_structure(convnet: Path, tmp_path: Path) -> None:
    artifact = compile_model(convnet, "cuda", tmp_path / "gpu", target_options={"arch": "sm_90"})
    manifest = artifact.manifest
    assert manifest.target.name == "cuda-sm90"
    assert manifest.target.device == "cuda"
    assert manifest.target.tvm["kind"] == "cuda" and manifest.target.tvm["arch"] == "sm_90"
    assert manifest.verification is None  # no GPU here: the manifest must not claim a check it did not run
    kernels = artifact.library_path.read_bytes().count(b"__global__")
    assert kernels >= 3, "expected the convolution, pooling and dense kernels as CUDA source"
    assert load_artifact(artifact.path, check_host=False).manifest == manifest


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this host has a GPU")
def test_a_host_without_a_gpu_refuses_it(convnet: Path, tmp_path: Path) -> None:
    compile_model(convnet, "cuda", tmp_path / "gpu")
    with pytest.raises(ArtifactError) as caught:
        load_artifact(tmp_path / "gpu")
    assert caught.value.check == "device"
    assert "GPU" in str(caught.value)


def test_unknown_arch_lists_the_known_ones(convnet: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownTargetError) as caught:
        compile_model(convnet, "cuda", tmp_path / "gpu", target_options={"arch": "sm_1000"})
    assert "sm_1000" in str(caught.value) and "sm_87" in str(caught.value)
    assert not (tmp_path / "gpu").exists()
