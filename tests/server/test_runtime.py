"""Model loading: plain .onnx files, onnxruntime artifacts, TVM artifacts compiled here, bad files."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgecam.compiler.artifact import ArtifactError, Manifest, TargetInfo, write_artifact
from edgecam.model import TensorSpec
from edgecam.preprocessing import Preprocessing
from edgecam.server.errors import ModelLoadError
from edgecam.server.runtime import load_model

LIGHT_MODULES = [
    "edgecam.server",
    "edgecam.server.runtime",
    "edgecam.server.sources",
    "edgecam.server.pipeline",
    "edgecam.server.metrics",
]


def _image(samples: tuple[np.ndarray, np.ndarray], k: int) -> np.ndarray:
    return (samples[0][k].astype(np.float32) / 255.0).reshape(1, 1, 28, 28)


def test_importing_the_server_pulls_in_no_heavy_module() -> None:
    code = (
        f"import sys\nfor m in {LIGHT_MODULES!r}: __import__(m)\n"
        "print(sorted(m for m in ('onnx', 'torch', 'tvm', 'onnxruntime', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_onnx_file_with_edgecam_metadata(make_onnx: Callable[..., Path], samples: tuple) -> None:
    model = load_model(make_onnx("fashion.onnx"), version="3")
    assert (model.name, model.version, model.platform) == ("tiny", "3", "onnxruntime_onnx")
    assert model.runtime.name == "onnxruntime"
    assert model.preprocessing == Preprocessing(height=28, width=28, color="GRAY")
    assert model.postprocessing.output == "logits" and model.postprocessing.apply_softmax
    assert model.labels == [f"class{k}" for k in range(10)]
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [("image", "FP32", [1, 1, 28, 28])]
    logits = model.runtime.run({"image": _image(samples, 4)})["logits"]
    assert logits.shape == (1, 10) and int(logits.argmax()) == 4
    assert model.runtime.memory_bytes() >= 784 * 10 * 4


def test_onnx_file_without_metadata_falls_back(make_onnx: Callable[..., Path]) -> None:
    model = load_model(make_onnx("plain_net.onnx", metadata=False), name=None)
    assert model.name == "plain_net"
    assert model.preprocessing == Preprocessing(height=28, width=28, color="GRAY", layout="NCHW")
    assert model.labels == []
    assert load_model(make_onnx("other.onnx", metadata=False), name="renamed").name == "renamed"


def test_corrupt_or_missing_onnx_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ModelLoadError, match=r"broken\.onnx"):
        load_model(bad)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "absent.onnx")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="neither an artifact directory"):
        load_model(tmp_path / "notes.txt")


def _manifest(runtime: str, library: str, outputs: list[TensorSpec] | None = None) -> Manifest:
    return Manifest(
        model_name="tiny",
        runtime=runtime,  # type: ignore[arg-type]
        library=library,
        target=TargetInfo(name=platform.machine(), arch=platform.machine()),
        inputs=[TensorSpec(name="image", datatype="FP32", shape=[1, 1, 28, 28])],
        outputs=outputs or [TensorSpec(name="logits", datatype="FP32", shape=[1, 10])],
        preprocessing=Preprocessing(height=28, width=28, color="GRAY"),
        labels=[f"class{k}" for k in range(10)],
    )


def test_onnxruntime_artifact(make_onnx: Callable[..., Path], tmp_path: Path, samples: tuple) -> None:
    onnx_file = make_onnx()
    files = {"model.onnx": onnx_file}
    artifact = write_artifact(tmp_path / "art", _manifest("onnxruntime", "model.onnx"), files)
    model = load_model(artifact.path, version="2")
    assert (model.name, model.version, model.platform) == ("tiny", "2", "onnxruntime_onnx")
    assert model.manifest is not None and model.labels[3] == "class3"
    assert int(model.runtime.run({"image": _image(samples, 7)})["logits"].argmax()) == 7
    # A manifest that disagrees with the file is refused, naming what differs.
    scores = [TensorSpec(name="scores", datatype="FP32", shape=[1, 10])]
    wrong = _manifest("onnxruntime", "model.onnx", scores)
    write_artifact(tmp_path / "wrong", wrong, files)
    with pytest.raises(ArtifactError, match=r"outputs.*scores"):
        load_model(tmp_path / "wrong")
    # Tampering is caught by the artifact check before anything is loaded.
    (artifact.path / "model.onnx").write_bytes(onnx_file.read_bytes() + b"\x00")
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(artifact.path)


_COMPILE = textwrap.dedent("""
    import sys, onnx, tvm
    from tvm.relax.frontend.onnx import from_onnx
    mod = from_onnx(onnx.load(sys.argv[1]), keep_params_in_input=False)
    tvm.compile(mod, target="llvm").export_library(sys.argv[2])
""")

# Runs in a fresh process, as on a camera: loads each artifact given and reports what happened.
_LOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edgecam.server.runtime import load_model
    report = {}
    for path in sys.argv[1:]:
        try:
            model = load_model(path)
        except Exception as exc:
            report[path] = {"error": type(exc).__name__ + ": " + str(exc)}
            continue
        image = np.zeros((1, 1, 28, 28), np.float32)
        image[0, 0, 10:12, 4:24] = 1.0
        out = model.runtime.run({"image": image})
        first = {k: v.tolist() for k, v in out.items()}
        other = np.zeros_like(image)
        other[0, 0, 4:24, 10:12] = 1.0
        second = model.runtime.run({"image": other})  # reuses the input's staging buffer
        report[path] = {"platform": model.platform, "memory": model.runtime.memory_bytes(),
                        "outputs": first,
                        "outputs_after_another_run": {k: v.tolist() for k, v in out.items()},
                        "other_outputs": {k: v.tolist() for k, v in second.items()},
                        "input_untouched": bool(image[0, 0, 10, 4] == 1.0 and other.sum() == 40)}
    import tvm
    report["runtime_only"] = tvm.base._RUNTIME_ONLY
    report["torch_loaded"] = "torch" in sys.modules
    report["onnx_loaded"] = "onnx" in sys.modules
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def tvm_library(tmp_path_factory: pytest.TempPathFactory, onnx_builder: Callable[..., Path]) -> Path:
    """A Relax VM library of the tiny two-output model, compiled for this host in a subprocess."""
    workdir = tmp_path_factory.mktemp("tvm")
    onnx_file = onnx_builder(workdir / "tiny.onnx", probs_output=True)
    library = workdir / "model.so"
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE, str(onnx_file), str(library)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if result.returncode != 0:
        pytest.skip(f"TVM cannot compile here: {result.stderr.strip().splitlines()[-1:]}")
    return library


def test_tvm_artifact_runs_with_the_runtime_only(tvm_library: Path, tmp_path: Path) -> None:
    outputs = [
        TensorSpec(name="logits", datatype="FP32", shape=[1, 10]),
        TensorSpec(name="probs", datatype="FP32", shape=[1, 10]),
    ]
    good = write_artifact(tmp_path / "good", _manifest("tvm", "model.so", outputs), {"model.so": tvm_library})
    corrupt_lib = tmp_path / "corrupt.so"
    corrupt_lib.write_bytes(tvm_library.read_bytes()[:4000])
    corrupt = write_artifact(
        tmp_path / "corrupt", _manifest("tvm", "model.so", outputs), {"model.so": corrupt_lib}
    )
    wrong_shape = [TensorSpec(name="logits", datatype="FP32", shape=[1, 5]), outputs[1]]
    mismatch = write_artifact(
        tmp_path / "mismatch", _manifest("tvm", "model.so", wrong_shape), {"model.so": tvm_library}
    )
    paths = [str(good.path), str(corrupt.path), str(mismatch.path)]
    result = subprocess.run(
        [sys.executable, "-c", _LOAD, *paths], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["runtime_only"] and not report["torch_loaded"] and not report["onnx_loaded"]
    loaded = report[paths[0]]
    assert loaded["platform"] == f"tvm_{platform.machine()}"
    logits, probs = np.array(loaded["outputs"]["logits"]), np.array(loaded["outputs"]["probs"])
    assert logits.shape == probs.shape == (1, 10)  # a tuple result, mapped to the manifest's names
    assert int(logits.argmax()) == 5 and abs(float(probs.sum()) - 1) < 1e-5
    assert loaded["memory"] >= tvm_library.stat().st_size
    # Outputs are the caller's: another run (through the same staging buffer) leaves them as they were.
    assert loaded["outputs_after_another_run"] == loaded["outputs"] and loaded["input_untouched"]
    assert loaded["other_outputs"]["logits"] != loaded["outputs"]["logits"]
    assert "ModelLoadError" in report[paths[1]]["error"] and "model.so" in report[paths[1]]["error"]
    assert "ModelLoadError" in report[paths[2]]["error"] and "[1, 5]" in report[paths[2]]["error"]
