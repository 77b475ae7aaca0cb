"""The gRPC API of an in-process EdgecamServer over a real loopback socket (tiny ONNX Runtime model)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecam.client.client import EdgecamClient, EdgecamClientError
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.server.app import EdgecamServer
from edgecam.server.errors import ModelLoadError
from edgecam.server.settings import ModelConfig, ServerSettings


@pytest.fixture(scope="module")
def running(
    onnx_builder: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgecamServer]:
    model = onnx_builder(tmp_path_factory.mktemp("model") / "tiny.onnx")
    server = EdgecamServer(ServerSettings(grpc_port=0, metrics_port=0, models=[ModelConfig(path=model)]))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stub(running: EdgecamServer) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


def test_health_and_metadata(stub: oip_grpc.GRPCInferenceServiceStub, running: EdgecamServer) -> None:
    assert stub.ServerLive(oip.ServerLiveRequest()).live
    assert stub.ServerReady(oip.ServerReadyRequest()).ready
    assert stub.ModelReady(oip.ModelReadyRequest(name="tiny")).ready
    assert not stub.ModelReady(oip.ModelReadyRequest(name="tiny", version="7")).ready
    meta = stub.ModelMetadata(oip.ModelMetadataRequest(name="tiny"))
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "FP32", [1, 1, 28, 28])]
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_typed_contents_are_accepted(
    stub: oip_grpc.GRPCInferenceServiceStub, samples: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = samples
    x = (images[3] / 255.0).astype(np.float32).reshape(1, 1, 28, 28)
    request = oip.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request)
    logits = np.frombuffer(response.raw_output_contents[0], np.float32)
    assert int(logits.argmax()) == labels[3]


def test_typed_contents_with_the_wrong_count_are_refused(stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    request = oip.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28]).contents.fp32_contents.extend(
        [0.0] * 5
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "5 values" in caught.value.details() and "784" in caught.value.details()


def test_raw_contents_count_must_match_inputs(stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    request = oip.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.extend([b"\x00" * 3136, b"\x00" * 3136])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 raw_input_contents for 1 inputs" in caught.value.details()


def test_requested_output_must_exist(stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    request = oip.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(b"\x00" * 3136)
    request.outputs.add(name="probabilities")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert "probabilities" in caught.value.details() and "logits" in caught.value.details()


def test_client_classifies_with_server_preprocessing(
    running: EdgecamServer, samples: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = samples
    with EdgecamClient(f"127.0.0.1:{running.grpc_port}") as client:
        client.wait_ready(timeout=10)
        info = client.model_info("tiny")
        assert info.labels[0] == "class0"
        for image, label in zip(images, labels, strict=True):
            assert client.classify("tiny", image)[0].index == label
        with pytest.raises(EdgecamClientError) as caught:
            client.model_info("absent")
        assert caught.value.code == "NOT_FOUND"


def test_requests_are_counted_by_status(
    running: EdgecamServer, stub: oip_grpc.GRPCInferenceServiceStub
) -> None:
    before = (
        running.registry.get_sample_value(
            "edgecam_requests_total", {"model": "tiny", "code": "INVALID_ARGUMENT"}
        )
        or 0.0
    )
    request = oip.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="wrong", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(b"\x00" * 3136)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(request)
    after = running.registry.get_sample_value(
        "edgecam_requests_total", {"model": "tiny", "code": "INVALID_ARGUMENT"}
    )
    assert after == before + 1


def test_a_missing_model_stops_start_up_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        EdgecamServer(
            ServerSettings(grpc_port=0, metrics_port=0, models=[ModelConfig(path=tmp_path / "nope")])
        )
    assert "nope" in str(caught.value)
