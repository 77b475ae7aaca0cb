"""TLS, mTLS and bearer tokens on a real socket, with certificates made by openssl for the test."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecam.client.client import ClientTls, EdgecamClient, EdgecamClientError
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.server.app import EdgecamServer
from edgecam.server.settings import ModelConfig, ServerSettings, TlsConfig

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
TOKEN = "s3cret-token-for-tests"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=edgecam test CA",
        "-keyout",
        d / "ca.key",
        "-out",
        d / "ca.pem",
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            d / f"{name}.key",
            "-out",
            d / f"{name}.csr",
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            d / f"{name}.csr",
            "-CA",
            d / "ca.pem",
            "-CAkey",
            d / "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            d / "san.ext",
            "-out",
            d / f"{name}.pem",
        )
    return d


@pytest.fixture
def start(
    onnx_builder: Callable[..., Path], tmp_path: Path, serve: Callable[..., EdgecamServer]
) -> Callable[..., EdgecamServer]:
    model = onnx_builder(tmp_path / "tiny.onnx")
    return lambda **settings: serve(models=[ModelConfig(path=model)], **settings)


def test_token_is_required_except_for_health(start: Callable[..., EdgecamServer]) -> None:
    server = start(auth_token=TOKEN)
    address = f"127.0.0.1:{server.grpc_port}"
    with grpc.insecure_channel(address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(oip.ServerLiveRequest()).live  # probes need no token
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelMetadata(oip.ModelMetadataRequest(name="tiny"), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        meta = stub.ModelMetadata(
            oip.ModelMetadataRequest(name="tiny"), metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
        assert meta.name == "tiny"
    with EdgecamClient(address) as anonymous, pytest.raises(EdgecamClientError) as caught_client:
        anonymous.cameras()
    assert caught_client.value.code == "UNAUTHENTICATED"
    with EdgecamClient(address, token=TOKEN) as client:
        assert client.cameras() == []
        assert client.model_info("tiny").name == "tiny"


def test_streams_are_protected_too(start: Callable[..., EdgecamServer]) -> None:
    server = start(auth_token=TOKEN)
    with (
        EdgecamClient(f"127.0.0.1:{server.grpc_port}") as client,
        pytest.raises(EdgecamClientError) as caught,
    ):
        next(iter(client.stream("any")))
    assert caught.value.code == "UNAUTHENTICATED"


def test_token_file_allows_rotation(start: Callable[..., EdgecamServer], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\nold-token\nnew-token\n")
    server = start(auth_tokens_file=tokens)
    for token in ("old-token", "new-token"):
        with EdgecamClient(f"127.0.0.1:{server.grpc_port}", token=token) as client:
            assert client.model_info("tiny").name == "tiny"


def test_tls(start: Callable[..., EdgecamServer], pki: Path) -> None:
    server = start(tls=TlsConfig(cert_file=pki / "server.pem", key_file=pki / "server.key"))
    address = f"127.0.0.1:{server.grpc_port}"
    with EdgecamClient(address, tls=ClientTls(ca_file=pki / "ca.pem")) as client:
        assert client.model_info("tiny").name == "tiny"
    with EdgecamClient(address, timeout=3) as plaintext, pytest.raises(EdgecamClientError) as caught:
        plaintext.live()
    assert caught.value.code == "UNAVAILABLE"


def test_mtls_requires_a_client_certificate(start: Callable[..., EdgecamServer], pki: Path) -> None:
    tls = TlsConfig(cert_file=pki / "server.pem", key_file=pki / "server.key", client_ca_file=pki / "ca.pem")
    server = start(tls=tls, auth_token=TOKEN)
    address = f"127.0.0.1:{server.grpc_port}"
    with EdgecamClient(address, timeout=3, token=TOKEN, tls=ClientTls(ca_file=pki / "ca.pem")) as no_cert:
        with pytest.raises(EdgecamClientError) as caught:
            no_cert.live()
        assert caught.value.code == "UNAVAILABLE"
    mutual = ClientTls(ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "client.key")
    with EdgecamClient(address, token=TOKEN, tls=mutual) as client:
        assert client.model_info("tiny").name == "tiny"


def test_unreadable_tls_file_stops_start_up(onnx_builder: Callable[..., Path], tmp_path: Path) -> None:
    server = EdgecamServer(
        ServerSettings(
            grpc_port=0,
            metrics_port=0,
            models=[ModelConfig(path=onnx_builder(tmp_path / "tiny.onnx"))],
            tls=TlsConfig(cert_file=tmp_path / "missing.pem", key_file=tmp_path / "missing.key"),
        )
    )
    with pytest.raises(OSError, match=r"tls: cannot read .*missing"):
        server.start()
    server.stop()


def test_reflection_lists_the_services(start: Callable[..., EdgecamServer]) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = start()
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"inference.GRPCInferenceService", "edgecam.v1.CameraService", "grpc.health.v1.Health"} <= names
