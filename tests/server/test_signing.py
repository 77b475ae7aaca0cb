"""Signed artifacts: `edgecam keygen`/`sign`, write_artifact signing, and a server that trusts keys.

Artifacts here hold the tiny ONNX model (fast); test_trust.py signs real TVM builds with `compile`.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edgecam.compiler.artifact import MANIFEST_NAME, Manifest, TargetInfo, write_artifact
from edgecam.model import TensorSpec
from edgecam.preprocessing import Preprocessing
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.server.app import EdgecamServer
from edgecam.server.errors import ModelLoadError
from edgecam.server.settings import ModelConfig, ServerSettings
from edgecam.signing import (
    SIGNATURE_NAME,
    SignatureError,
    generate_key_pair,
    load_private_key,
    load_public_keys,
    verify_manifest,
)


def _edgecam(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecam", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Three key pairs: `old` and `new` (a rotation), `stranger` (trusted by nobody)."""
    found = {}
    for name in ("old", "new", "stranger"):
        generate_key_pair(tmp_path / "keys" / name, tmp_path / "keys" / f"{name}.pub")
        found[name] = tmp_path / "keys" / name
    return found


def _artifact(out: Path, onnx_file: Path, key: Path | None) -> Path:
    manifest = Manifest(
        model_name="tiny",
        runtime="onnxruntime",
        library="model.onnx",
        target=TargetInfo(name="onnx", arch=platform.machine()),
        inputs=[TensorSpec(name="image", datatype="FP32", shape=[1, 1, 28, 28])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[1, 10])],
        preprocessing=Preprocessing(height=28, width=28, color="GRAY"),
    )
    signer = load_private_key(key) if key else None
    return write_artifact(out, manifest, {"model.onnx": onnx_file}, signer).path


def test_keygen_and_sign_commands(tmp_path: Path, tiny_onnx: Path) -> None:
    key = tmp_path / "fleet.key"
    made = _edgecam("keygen", key)
    assert made.returncode == 0, made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = _edgecam("keygen", key)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    artifact = _artifact(tmp_path / "a", tiny_onnx, None)
    signed = _edgecam("sign", artifact, "--sign-key", key)
    assert signed.returncode == 0, signed.stderr
    kid, _ = verify_manifest(artifact / MANIFEST_NAME, load_public_keys([tmp_path / "fleet.key.pub"]))
    assert kid in signed.stderr
    (artifact / "model.onnx").write_bytes(b"tampered")  # sign only what the manifest describes
    refused = _edgecam("sign", artifact, "--sign-key", key)
    assert refused.returncode == 2 and "sha256" in refused.stderr


def test_signature_checks_name_what_is_wrong(tmp_path: Path, tiny_onnx: Path, keys: dict[str, Path]) -> None:
    trusted = load_public_keys([keys["old"].with_suffix(".pub")])
    artifact = _artifact(tmp_path / "a", tiny_onnx, keys["old"])
    verify_manifest(artifact / MANIFEST_NAME, trusted)
    manifest = artifact / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace('"tiny"', '"tinY"'))
    with pytest.raises(SignatureError, match=r"does not match manifest\.json"):
        verify_manifest(manifest, trusted)
    stranger = _artifact(tmp_path / "b", tiny_onnx, keys["stranger"])
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        verify_manifest(stranger / MANIFEST_NAME, trusted)
    (stranger / SIGNATURE_NAME).write_text("{not json")
    with pytest.raises(SignatureError, match="not a valid signature record"):
        verify_manifest(stranger / MANIFEST_NAME, trusted)
    with pytest.raises(SignatureError, match="hold no public key"):
        load_public_keys([tmp_path / "a"])  # a directory without *.pem / *.pub


def test_a_server_with_keys_loads_only_artifacts_signed_by_them(
    tmp_path: Path, tiny_onnx: Path, keys: dict[str, Path], serve: Callable[..., EdgecamServer]
) -> None:
    repo = tmp_path / "repo"
    _artifact(repo / "tiny" / "1", tiny_onnx, keys["old"])
    _artifact(repo / "tiny" / "2", tiny_onnx, None)  # unsigned
    _artifact(repo / "tiny" / "3", tiny_onnx, keys["stranger"])
    _artifact(repo / "tiny" / "4", tiny_onnx, keys["new"])
    # Rotation: the old and the new key are both trusted (a directory of .pub files, and a file).
    trust_dir = tmp_path / "trusted"
    trust_dir.mkdir()
    (trust_dir / "old.pub").write_bytes(keys["old"].with_suffix(".pub").read_bytes())
    server = serve(model_repository=repo, trusted_keys=[trust_dir, keys["new"].with_suffix(".pub")])
    assert server.repository.get("tiny").version == "4"
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        for version, reason in (("2", "is not signed"), ("3", "not among the trusted keys")):
            request = oip.RepositoryModelLoadRequest(model_name="tiny")
            request.parameters["version"].string_param = version
            with pytest.raises(grpc.RpcError) as caught:
                stub.RepositoryModelLoad(request, timeout=60)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason in caught.value.details()
        request = oip.RepositoryModelLoadRequest(model_name="tiny")
        request.parameters["version"].string_param = "1"
        stub.RepositoryModelLoad(request, timeout=60)  # signed by the old key: still trusted
    assert server.repository.get("tiny").version == "1"
    refused = server.registry.get_sample_value(
        "edgecam_model_load_failures_total", {"model": "tiny", "reason": "signature"}
    )
    assert refused == 2


def test_without_keys_unsigned_artifacts_load_and_with_keys_plain_onnx_is_refused(
    tmp_path: Path, tiny_onnx: Path, keys: dict[str, Path], serve: Callable[..., EdgecamServer]
) -> None:
    unsigned = _artifact(tmp_path / "unsigned", tiny_onnx, None)
    assert serve(models=[ModelConfig(path=unsigned)]).repository.get("tiny")
    with pytest.raises(ModelLoadError, match="cannot be signed"):
        EdgecamServer(
            ServerSettings(
                grpc_port=0,
                metrics_port=0,
                models=[ModelConfig(path=tiny_onnx)],
                trusted_keys=[keys["old"].with_suffix(".pub")],
            )
        )
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ModelLoadError, match="cannot read public key"):
        EdgecamServer(
            ServerSettings(
                grpc_port=0, metrics_port=0, models=[ModelConfig(path=unsigned)], trusted_keys=[bad_key]
            )
        )
    assert json.loads((unsigned / MANIFEST_NAME).read_text())["model_name"] == "tiny"
