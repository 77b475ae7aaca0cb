"""The TVM runtime with CUDA artifacts, on a host without a GPU: what it refuses and how it says so.
(Running one on a GPU is bench/bench_cuda.py's job, on a lent GPU machine.)"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from edgecam.compiler.artifact import Manifest, TargetInfo, write_artifact
from edgecam.model import TensorSpec
from edgecam.preprocessing import Preprocessing
from edgecam.server.errors import ModelLoadError
from edgecam.server.runtime.tvm import TvmRuntime, _check_compute_capability

no_gpu = pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this host has a GPU")

# A fresh process in runtime-only mode, as on a camera: the artifact past the host check, into the runtime.
_LOAD = textwrap.dedent("""
    import json, sys
    from edgecam.compiler.artifact import load_artifact
    from edgecam.server.runtime.tvm import TvmRuntime
    try:
        TvmRuntime(load_artifact(sys.argv[1], check_host=False))
        error = None
    except Exception as exc:
        error = type(exc).__name__ + ": " + str(exc)
    import tvm
    print(json.dumps({"error": error, "runtime_only": tvm.base._RUNTIME_ONLY}))
""")


def _cuda_manifest(device_code: str | None) -> Manifest:
    return Manifest(
        model_name="tiny",
        runtime="tvm",
        library="model.so",
        target=TargetInfo(name="cuda-sm87", arch=platform.machine(), device="cuda", device_code=device_code),
        inputs=[TensorSpec(name="image", datatype="FP32", shape=[1, 1, 28, 28])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[1, 10])],
        preprocessing=Preprocessing(height=28, width=28, color="GRAY"),
    )


@no_gpu
def test_a_cubin_artifact_without_the_driver_names_what_is_missing(
    onnx_builder: Callable[..., Path], tmp_path: Path
) -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit) is not on PATH: CUDA artifacts carry a cubin compiled by it")
    from edgecam.compiler.build import compile_model

    artifact = compile_model(onnx_builder(tmp_path / "tiny.onnx"), "cuda", tmp_path / "gpu")
    result = subprocess.run(
        [sys.executable, "-c", _LOAD, str(artifact.path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["runtime_only"]
    # It got past the device check to loading TVM's CUDA runtime, which needs the driver this host lacks.
    assert report["error"].startswith("ModelLoadError: cannot load TVM's CUDA runtime library")
    assert "libcuda.so.1" in report["error"]


def test_cuda_source_artifacts_are_refused_before_loading(tmp_path: Path) -> None:
    library = tmp_path / "model.so"
    library.write_bytes(b"never loaded")
    artifact = write_artifact(tmp_path / "old", _cuda_manifest(None), {"model.so": library})
    with pytest.raises(ModelLoadError) as caught:
        TvmRuntime(artifact)
    assert "NVRTC" in str(caught.value) and "--arch" in str(caught.value)


@pytest.mark.parametrize(
    ("arch", "gpu", "runs"),
    [
        ("sm_87", "8.7", True),
        ("sm_86", "8.9", True),  # same major, newer minor: binary compatible
        ("sm_90", "9.0", True),
        ("sm_87", "8.6", False),
        ("sm_87", "9.0", False),  # a cubin does not run on another major version
        ("sm_90", "12.0", False),
    ],
)
def test_compute_capability_check(arch: str, gpu: str, runs: bool) -> None:
    if runs:
        _check_compute_capability(Path("art"), arch, gpu)
    else:
        with pytest.raises(ModelLoadError, match=rf"{arch}.*{gpu}.*--arch sm_{gpu.replace('.', '')}"):
            _check_compute_capability(Path("art"), arch, gpu)
