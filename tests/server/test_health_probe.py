"""The fleet's health gate (deploy/.../files/edgecam-health) against real TLS, mTLS and token servers.

The probe runs as Ansible runs it on a camera: a subprocess given the camera's config.yaml. A camera
configured with TLS (the README's production example: mTLS and a tokens file) must pass the gate,
and a probe that cannot verify the server must fail it with one line, not hang or pass.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from test_security import _openssl
from test_security import pki as pki  # the fixture, used by name

from edgecam.server.app import EdgecamServer
from edgecam.server.settings import ServerSettings

PROBE = (
    Path(__file__).resolve().parents[2]
    / "deploy"
    / "ansible"
    / "roles"
    / "edgecam"
    / "files"
    / "edgecam-health"
)
TOKEN = "probe-token"


@pytest.fixture
def serve(onnx_builder: Callable[..., Path], tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """`serve(**settings)` starts a server and writes its config.yaml; returns (address, config path)."""
    servers: list[EdgecamServer] = []
    model = onnx_builder(tmp_path / "tiny.onnx")

    def make(**settings: object) -> tuple[str, Path]:
        config = {"grpc_port": 0, "metrics_port": 0, "models": [{"path": str(model)}], **settings}
        path = tmp_path / f"config{len(servers)}.yaml"
        path.write_text(yaml.safe_dump(config))
        server = EdgecamServer(ServerSettings.load(path))
        server.start()
        servers.append(server)
        return f"127.0.0.1:{server.grpc_port}", path

    yield make
    for server in servers:
        server.stop()


def _probe(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROBE), *map(str, args)], capture_output=True, text=True, timeout=30
    )


def test_the_gate_passes_a_camera_with_mtls_and_tokens(
    serve: Callable[..., tuple[str, Path]],
    pki: Path,
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# rotated weekly\n{TOKEN}\nolder-token\n")
    tls = {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")}
    address, config = serve(tls={**tls, "client_ca_file": str(pki / "ca.pem")}, auth_tokens_file=str(tokens))
    passed = _probe(address, "--config", config, "--ca-file", pki / "ca.pem")
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.strip() == f"{address}: SERVING"
    # The client pair given explicitly, as edgecam_health_tls_cert_file/key_file pass it.
    explicit = _probe(
        address, "--config", config, "--ca-file", pki / "ca.pem",
        "--cert-file", pki / "client.pem", "--key-file", pki / "client.key",
    )  # fmt: skip
    assert explicit.returncode == 0, explicit.stderr
    plaintext = _probe(address)  # what the gate did before it read the config: never passes
    assert plaintext.returncode == 1 and plaintext.stderr.count("\n") == 1


def test_a_self_signed_server_is_trusted_through_its_own_certificate(
    serve: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=camera",
        "-addext", "subjectAltName=DNS:camera.example",
        "-keyout", tmp_path / "self.key", "-out", tmp_path / "self.pem",
    )  # fmt: skip
    address, config = serve(
        tls={"cert_file": str(tmp_path / "self.pem"), "key_file": str(tmp_path / "self.key")}
    )
    named = _probe(address, "--config", config, "--server-name", "camera.example")
    assert named.returncode == 0, named.stderr
    wrong_name = _probe(address, "--config", config, "--timeout", "2")  # 127.0.0.1 is not in the certificate
    assert wrong_name.returncode == 1 and wrong_name.stderr.count("\n") == 1


def test_a_server_signed_by_another_ca_fails_the_gate(
    serve: Callable[..., tuple[str, Path]],
    pki: Path,
    tmp_path: Path,
) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other CA",
        "-keyout", tmp_path / "other.key", "-out", tmp_path / "other.pem",
    )  # fmt: skip
    address, config = serve(tls={"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key")})
    failed = _probe(address, "--config", config, "--ca-file", tmp_path / "other.pem", "--timeout", "2")
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"{address}: UNAVAILABLE") and failed.stderr.count("\n") == 1
    assert "CERTIFICATE_VERIFY_FAILED" in failed.stderr
