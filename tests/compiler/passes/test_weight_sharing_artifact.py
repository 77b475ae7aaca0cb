"""Coded weights in an artifact: compile_model(weight_coding=...) keeps them out of the library, stores them
in weights.ecw, and the camera runtime decodes them at load and matches ONNX Runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import residual_net

from edgecam.compiler import verify
from edgecam.compiler.artifact import MANIFEST_NAME, Artifact, ArtifactError, load_artifact, sha256_file
from edgecam.compiler.build import compile_model
from edgecam.compiler.errors import BuildError, InvalidOptionError
from edgecam.compiler.passes import PassContext, WeightCoding, create_pass, parse_pass_config

CODED = ["c1_w", "c2_w", "dw_w", "fc_w"]  # residual_net's Conv/Gemm weights, in initializer order
RAW_BYTES = (8 * 3 * 9 + 8 * 8 + 8 * 9 + 10 * 8) * 4

# Loads the artifact the way the server does, in a process with only the TVM runtime.
_LOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edgecam.server.runtime import load_model
    model = load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    import tvm
    print(json.dumps({"logits": model.runtime.run({"image": x})["logits"].tolist(),
                      "memory": model.runtime.memory_bytes(), "runtime_only": tvm.base._RUNTIME_ONLY,
                      "heavy": sorted(m for m in ("onnx", "torch", "sklearn") if m in sys.modules)}))
""")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WeightCoding]:
    """residual_net (Conv, BN, depthwise Conv, Gemm transB) after 4-bit weight sharing, and its coding."""
    import onnx

    workdir = tmp_path_factory.mktemp("shared")
    source = residual_net()
    config = parse_pass_config({"kind": "weight_sharing", "bits": 4})
    result = create_pass(config).apply(source, PassContext([], workdir))
    assert result.coding is not None
    onnx.save(result.model, str(workdir / "shared.onnx"))
    return workdir / "shared.onnx", result.coding


@pytest.fixture(scope="module")
def artifact(shared: tuple[Path, WeightCoding], tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    model_path, coding = shared
    return compile_model(model_path, "x86_64", tmp_path_factory.mktemp("art") / "art", weight_coding=coding)


def test_the_manifest_records_the_coded_weights_and_no_raw_copy(
    artifact: Artifact, shared: tuple[Path, WeightCoding]
) -> None:
    manifest = load_artifact(artifact.path).manifest
    coded = manifest.coded_weights
    assert coded is not None and coded.codec == "kmeans-huffman/1" and coded.file == "weights.ecw"
    assert coded.params == CODED  # model order: what main takes after the image
    assert coded.transform == "main_transform_params"  # the Gemm's transB transpose runs once, at load
    # compile_model alone has no reference for coded weights (compress gives it the original model).
    assert set(manifest.files) == {"model.so", "weights.ecw"}
    assert manifest.verification is not None and manifest.verification.max_abs_diff <= 1e-4
    size = (artifact.path / "weights.ecw").stat().st_size
    assert manifest.measurements["coded_weight_bytes"] == size
    # The bundle is the pass's blobs plus 9 bytes, and 10 + name length per tensor; nothing else.
    encoded = shared[1].encoded
    assert size == 9 + sum(10 + len(name) + len(blob) for name, blob in encoded.items())
    assert size < RAW_BYTES / 2  # tiny layers: headers and 16-entry codebooks weigh a lot here


def test_the_library_computes_with_the_weights_it_is_given(
    artifact: Artifact, shared: tuple[Path, WeightCoding]
) -> None:
    """The weights are arguments, not constants baked into model.so: other weights, other outputs."""
    from edgecam.compiler.frontends.onnx import load_onnx

    model_path, coding = shared
    model = load_onnx(model_path)
    feeds = verify.sample_inputs(model, 2)
    weights = [coding.decode(coding.encoded[name]) for name in CODED]
    expected = verify.run_onnxruntime(model_path, feeds)
    args = (artifact.library_path, feeds, ["image"])
    same = verify.run_library(*args, weights, "main_transform_params")
    other = verify.run_library(*args, [*weights[:3], weights[3] * 2], "main_transform_params")
    assert verify.max_difference(same, expected) <= 1e-4
    assert verify.max_difference(other, expected) > 0.1


def test_the_camera_runtime_decodes_at_load_and_matches_onnxruntime(
    artifact: Artifact, shared: tuple[Path, WeightCoding], tmp_path: Path
) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD, str(artifact.path), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["runtime_only"] and got["heavy"] == []
    session = ort.InferenceSession(str(shared[0]), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": x})[0]
    np.testing.assert_allclose(np.asarray(got["logits"], np.float32), expected, atol=1e-4)
    assert got["memory"] >= RAW_BYTES  # the decoded weights count as the model's memory


def _rehash(directory: Path) -> None:
    """Make the manifest's hashes match the files again (a corruption sha256 cannot see)."""
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["files"] = {name: sha256_file(directory / name) for name in manifest["files"]}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_a_corrupted_weights_file_is_refused_at_load(artifact: Artifact, tmp_path: Path) -> None:
    from edgecam.server.runtime import load_model

    copy = Path(shutil.copytree(artifact.path, tmp_path / "copy"))
    weights = copy / "weights.ecw"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"check 'sha256' failed: .*weights.ecw") as caught:
        load_model(copy)
    assert caught.value.check == "sha256"
    # Cut short and re-hashed: the hashes pass, the codec's own checks refuse it.
    weights.write_bytes(bytes(data[:-3]))
    _rehash(copy)
    with pytest.raises(
        ArtifactError, match=r"check 'coded_weights' failed: .*weights.ecw.*check 'length'"
    ) as cut:
        load_model(copy)
    assert cut.value.check == "coded_weights"


def test_compile_refuses_a_coding_that_is_not_the_model(
    shared: tuple[Path, WeightCoding], tmp_path: Path
) -> None:
    model_path, coding = shared
    stranger = replace(coding, encoded={**coding.encoded, "fc_w": coding.encoded["c2_w"]})
    with pytest.raises(BuildError, match="coded initializer 'fc_w' decodes to other values"):
        compile_model(model_path, "x86_64", tmp_path / "a", weight_coding=stranger)
    missing: Any = replace(coding, encoded={"nope": b""})
    with pytest.raises(InvalidOptionError, match=r"\['nope'\], which are not initializers"):
        compile_model(model_path, "x86_64", tmp_path / "c", weight_coding=missing)
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_codec_the_camera_cannot_decode_is_refused(
    shared: tuple[Path, WeightCoding], tmp_path: Path
) -> None:
    model_path, coding = shared
    with pytest.raises(
        InvalidOptionError, match=r"codec 'zip' is not one the camera runtime decodes.*kmeans"
    ):
        compile_model(model_path, "x86_64", tmp_path / "art", weight_coding=replace(coding, codec="zip"))
    assert not (tmp_path / "art").exists()
