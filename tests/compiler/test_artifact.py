"""The artifact contract: written atomically, and refused at load with the failed check named."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from edgecam.compiler.artifact import (
    ArtifactError,
    Manifest,
    TargetInfo,
    host_cpu_features,
    load_artifact,
    write_artifact,
)
from edgecam.model import TensorSpec
from edgecam.preprocessing import Preprocessing


def _manifest(**target: object) -> Manifest:
    info = {"name": "test", "arch": platform.machine(), **target}
    return Manifest(
        model_name="m",
        runtime="onnxruntime",
        library="model.bin",
        target=TargetInfo.model_validate(info),
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[1, 3])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[1, 2])],
        preprocessing=Preprocessing(height=1, width=3),
    )


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"compiled code" * 100)
    write_artifact(tmp_path / "art", _manifest(), {"model.bin": payload})
    return tmp_path / "art"


def test_round_trip_records_every_hash(artifact_dir: Path) -> None:
    artifact = load_artifact(artifact_dir)
    assert artifact.manifest.model_name == "m"
    assert set(artifact.manifest.files) == {"model.bin"}
    assert len(artifact.manifest.files["model.bin"]) == 64


def test_tampered_file_is_refused(artifact_dir: Path) -> None:
    (artifact_dir / "model.bin").write_bytes(b"something else")
    with pytest.raises(ArtifactError) as caught:
        load_artifact(artifact_dir)
    assert caught.value.check == "sha256"
    assert "model.bin" in str(caught.value)


def test_missing_file_is_refused(artifact_dir: Path) -> None:
    (artifact_dir / "model.bin").unlink()
    with pytest.raises(ArtifactError) as caught:
        load_artifact(artifact_dir)
    assert caught.value.check == "files"


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_other_schema_versions_are_refused(artifact_dir: Path, version: object) -> None:
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    manifest["schema_version"] = version
    (artifact_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as caught:
        load_artifact(artifact_dir)
    assert caught.value.check == "schema_version"


def test_garbage_manifest_is_refused(artifact_dir: Path) -> None:
    (artifact_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError) as caught:
        load_artifact(artifact_dir)
    assert caught.value.check == "manifest"


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as caught:
        load_artifact(tmp_path)
    assert "manifest.json" in str(caught.value)


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    payload = tmp_path / "p"
    payload.write_bytes(b"x")
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    write_artifact(tmp_path / "art", _manifest(arch=other, name="elsewhere"), {"model.bin": payload})
    with pytest.raises(ArtifactError) as caught:
        load_artifact(tmp_path / "art")
    assert caught.value.check == "target"
    assert other in str(caught.value)
    load_artifact(tmp_path / "art", check_host=False)  # the files themselves are fine


def test_missing_cpu_feature_is_refused_before_anything_runs(tmp_path: Path) -> None:
    payload = tmp_path / "p"
    payload.write_bytes(b"x")
    features = [*sorted(host_cpu_features())[:2], "avx512_imaginary"]
    write_artifact(tmp_path / "art", _manifest(cpu_features=features), {"model.bin": payload})
    with pytest.raises(ArtifactError) as caught:
        load_artifact(tmp_path / "art")
    assert caught.value.check == "cpu_features"
    assert "avx512_imaginary" in str(caught.value)


def test_failed_write_keeps_the_previous_artifact(artifact_dir: Path, tmp_path: Path) -> None:
    before = (artifact_dir / "manifest.json").read_text()
    with pytest.raises(FileNotFoundError):
        write_artifact(artifact_dir, _manifest(), {"model.bin": tmp_path / "does-not-exist"})
    assert (artifact_dir / "manifest.json").read_text() == before
    load_artifact(artifact_dir)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".art")] == []
