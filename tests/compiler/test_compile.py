"""ONNX → TVM → verified artifact, on tiny models built in code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgecam.compiler import verify
from edgecam.compiler.artifact import load_artifact
from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import (
    InvalidOptionError,
    ModelImportError,
    UnknownTargetError,
    VerificationError,
)
from edgecam.compiler.frontends.onnx import load_onnx

_RUNTIME_ONLY = r"""
import json, sys
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine
vm = VirtualMachine(tvm.runtime.load_module(sys.argv[1]), tvm.cpu())
x = np.load(sys.argv[2])
print(json.dumps({"out": vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy().tolist(),
                  "compiler_loaded": any("libtvm_compiler" in l for l in open("/proc/self/maps"))}))
"""


def test_compiled_artifact_runs_on_the_runtime_alone_and_matches_onnxruntime(
    convnet: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    artifact = compile_model(convnet, "x86_64", tmp_path / "art")
    manifest = load_artifact(artifact.path).manifest
    assert manifest.runtime == "tvm" and manifest.target.name == "x86_64"
    assert manifest.verification is not None and manifest.verification.max_abs_diff <= 1e-4
    assert manifest.labels[3] == "c3" and manifest.preprocessing.color == "GRAY"
    assert {"model.so", "reference.onnx"} == set(manifest.files)
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _RUNTIME_ONLY, str(artifact.library_path), str(tmp_path / "x.npy")],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    got = json.loads(result.stdout)
    assert got["compiler_loaded"] is False, "the runtime-only process loaded libtvm_compiler"
    expected = ort.InferenceSession(str(convnet), providers=["CPUExecutionProvider"]).run(None, {"image": x})[
        0
    ]
    np.testing.assert_allclose(np.asarray(got["out"], np.float32), expected, atol=1e-4)


def test_verification_catches_a_library_that_computes_something_else(
    make_convnet: Callable[..., Path], tmp_path: Path
) -> None:
    """A library built from other weights must fail the check against the ONNX model."""
    ours, other = make_convnet("ours.onnx", seed=0), make_convnet("other.onnx", seed=1)
    artifact = compile_model(other, "x86_64", tmp_path / "other")
    model = load_onnx(ours)
    feeds = verify.sample_inputs(model, 4)
    difference = verify.max_difference(
        verify.run_library(artifact.library_path, feeds, ["image"]), verify.run_onnxruntime(ours, feeds)
    )
    assert difference > 0.1
    with pytest.raises(VerificationError) as caught:
        verify.check(difference, 1e-4)
    assert "nothing was written" in str(caught.value)
    verify.check(0.0, 1e-4)
    with pytest.raises(VerificationError):
        verify.check(float("nan"), 1e-4)


def test_failed_compile_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelImportError) as caught:
        compile_model(bad, "x86_64", tmp_path / "out")
    assert "bad.onnx" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_metadata_falls_back_to_the_input_shape(make_convnet: Callable[..., Path]) -> None:
    model = load_onnx(make_convnet("plain.onnx", metadata=False))
    assert model.name == "plain"
    assert (model.preprocessing.height, model.preprocessing.color) == (28, "GRAY")
    assert model.labels == []


def test_unknown_target_lists_the_valid_ones(convnet: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownTargetError) as caught:
        compile_model(convnet, "riscv-toaster", tmp_path / "out")
    assert "riscv-toaster" in str(caught.value) and "x86_64" in str(caught.value)
    with pytest.raises(UnknownTargetError) as caught:
        compile_model(convnet, "x86_64", tmp_path / "out", target_options={"mcpu": "pentium-9000"})
    assert "pentium-9000" in str(caught.value)
    with pytest.raises(UnknownTargetError) as caught:
        compile_model(convnet, "x86_64", tmp_path / "out", target_options={"threads": 4})
    assert "threads" in str(caught.value) and "mcpu" in str(caught.value)


def test_cli_prints_the_check_and_fails_cleanly(convnet: Path, tmp_path: Path) -> None:
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecam",
            "compile",
            str(convnet),
            "--target",
            "x86_64",
            "--out",
            str(tmp_path / "a"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "max |TVM - ONNX Runtime|" in ok.stderr
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecam",
            "compile",
            str(convnet),
            "--target",
            "nope",
            "--out",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "unknown target 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_compile_refuses_a_library_outside_the_tolerance_and_writes_nothing(
    convnet: Path, tmp_path: Path
) -> None:
    """TVM and ONNX Runtime sum in different orders (diff ~1e-6 here): a 1e-12 tolerance must fail."""
    with pytest.raises(VerificationError) as caught:
        compile_model(convnet, "x86_64", tmp_path / "out", tolerance=1e-12, samples=2)
    assert "tolerance 1e-12" in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["convnet.onnx"]  # no staging left behind


def test_manifest_records_source_measurements_and_target(convnet: Path, tmp_path: Path) -> None:
    import tvm

    manifest = compile_model(convnet, "x86_64", tmp_path / "art", samples=2).manifest
    assert manifest.model_name == "convnet" and manifest.tvm_version == tvm.__version__
    assert manifest.source is not None and manifest.source.sha256 == manifest.files["reference.onnx"]
    assert manifest.measurements["library_bytes"] > 0 and manifest.measurements["build_seconds"] > 0
    assert manifest.verification is not None and manifest.verification.samples == 2
    assert manifest.target.tvm["mcpu"] and manifest.target.arch == "x86_64"
    assert [(s.name, s.datatype, s.shape) for s in manifest.inputs] == [("image", "FP32", [1, 1, 28, 28])]
    assert [(s.name, s.shape) for s in manifest.outputs] == [("logits", [1, 10])]


def test_a_build_for_a_bigger_cpu_is_written_unverified_and_refused_here(
    convnet: Path, tmp_path: Path
) -> None:
    """The SIGILL guard end to end: znver4 code is never run on a host without AVX-512."""
    from edgecam.compiler.artifact import ArtifactError, host_cpu_features

    if "avx512f" in host_cpu_features():
        pytest.skip("this host can run znver4 code")
    artifact = compile_model(convnet, "x86_64", tmp_path / "art", target_options={"mcpu": "znver4"})
    assert artifact.manifest.verification is None
    with pytest.raises(ArtifactError) as caught:
        load_artifact(artifact.path)
    assert caught.value.check == "cpu_features" and "avx512f" in str(caught.value)


@pytest.mark.parametrize(("tolerance", "samples"), [(-1.0, 8), (float("nan"), 8), (1e-4, 0)])
def test_option_values_are_refused_before_any_work(
    convnet: Path, tmp_path: Path, tolerance: float, samples: int
) -> None:
    with pytest.raises(InvalidOptionError):
        compile_model(convnet, "x86_64", tmp_path / "out", tolerance=tolerance, samples=samples)


def test_preprocessing_that_does_not_fit_the_input_is_refused(convnet: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(convnet))
    for prop in model.metadata_props:
        if prop.key == "edgecam.preprocessing":
            prop.value = json.dumps({"height": 32, "width": 32, "color": "RGB"})
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    with pytest.raises(ModelImportError) as caught:
        load_onnx(tmp_path / "wrong.onnx")
    assert "[1, 3, 32, 32]" in str(caught.value) and "[1, 1, 28, 28]" in str(caught.value)


def test_cli_module_imports_no_heavy_libraries() -> None:
    """The lead's `edgecam` CLI mounts these commands; `edgecam --help` must stay fast."""
    heavy = "{'tvm', 'tvm_ffi', 'onnx', 'onnxruntime', 'torch'}"
    code = (
        "import sys, edgecam.compiler.cli, edgecam.compiler.build, edgecam.compiler.targets;"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "[]"
