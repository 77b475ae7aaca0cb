"""Model repository and hot reload over a real socket: no failed request, bad versions refused."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgecam.client.client import EdgecamClient
from edgecam.compiler.artifact import Manifest, TargetInfo, write_artifact
from edgecam.model import TensorSpec
from edgecam.preprocessing import Preprocessing
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.server.app import EdgecamServer
from edgecam.server.settings import CameraConfig, ServerSettings


def add_version(repo: Path, version: str, onnx_builder: Callable[..., Path]) -> None:
    staging = repo.parent / f"staging-{version}"
    staging.mkdir()
    onnx_builder(staging / "model.onnx", probs_output=version != "1")
    # Published by rename, as a deploy tool should: the watcher never sees half a version.
    staging.rename(repo / "tiny" / version)


def add_corrupt_artifact(repo: Path, version: str, onnx_builder: Callable[..., Path]) -> None:
    source = onnx_builder(repo.parent / "source.onnx")
    manifest = Manifest(
        model_name="tiny",
        runtime="onnxruntime",
        library="model.onnx",
        target=TargetInfo(name="onnx", arch=__import__("platform").machine()),
        inputs=[TensorSpec(name="image", datatype="FP32", shape=[1, 1, 28, 28])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[1, 10])],
        preprocessing=Preprocessing(height=28, width=28, color="GRAY"),
    )
    staging = repo.parent / f"staging-{version}"
    write_artifact(staging, manifest, {"model.onnx": source})
    with (staging / "model.onnx").open("r+b") as f:  # flip bytes after hashing: a damaged copy
        f.seek(100)
        f.write(b"\xff" * 8)
    staging.rename(repo / "tiny" / version)


@pytest.fixture
def start(repo: Path, serve: Callable[..., EdgecamServer]) -> Callable[..., EdgecamServer]:
    return lambda **settings: serve(model_repository=repo, **settings)


def _stub(server: EdgecamServer) -> tuple[grpc.Channel, oip_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return channel, oip_grpc.GRPCInferenceServiceStub(channel)


def _load(stub: oip_grpc.GRPCInferenceServiceStub, version: str | None = None) -> None:
    request = oip.RepositoryModelLoadRequest(model_name="tiny")
    if version:
        request.parameters["version"].string_param = version
    stub.RepositoryModelLoad(request, timeout=30)


def _infer_request() -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(np.zeros((1, 1, 28, 28), np.float32).tobytes())
    return request


def test_serves_the_newest_version_and_indexes_the_repository(
    start: Callable[..., EdgecamServer], repo: Path, onnx_builder: Callable[..., Path]
) -> None:
    add_version(repo, "2", onnx_builder)
    server = start()
    channel, stub = _stub(server)
    with channel:
        assert list(stub.ModelMetadata(oip.ModelMetadataRequest(name="tiny")).versions) == ["2"]
        index = stub.RepositoryIndex(oip.RepositoryIndexRequest())
        assert [(m.version, m.state) for m in index.models] == [("1", "UNAVAILABLE"), ("2", "READY")]
        ready = stub.RepositoryIndex(oip.RepositoryIndexRequest(ready=True))
        assert [m.version for m in ready.models] == ["2"]


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(
    start: Callable[..., EdgecamServer],
    repo: Path,
    onnx_builder: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start()
    add_corrupt_artifact(repo, "3", onnx_builder)
    channel, stub = _stub(server)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            _load(stub)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "sha256" in caught.value.details() and "'3'" in caught.value.details()
        assert list(stub.ModelMetadata(oip.ModelMetadataRequest(name="tiny")).versions) == ["1"]
        assert stub.ModelInfer(_infer_request()).model_version == "1"
        index = {m.version: m for m in stub.RepositoryIndex(oip.RepositoryIndexRequest()).models}
        assert index["3"].state == "FAILED" and "sha256" in index["3"].reason
    failures = server.registry.get_sample_value(
        "edgecam_model_load_failures_total", {"model": "tiny", "reason": "sha256"}
    )
    assert failures == 1
    refusals = [r.getMessage() for r in caplog.records if "refused tiny version 3" in r.getMessage()]
    assert refusals and "still serving version 1" in refusals[0]


def test_hot_reload_under_load_fails_no_request(
    start: Callable[..., EdgecamServer], repo: Path, onnx_builder: Callable[..., Path]
) -> None:
    add_version(repo, "2", onnx_builder)
    server = start()
    stop, failures, versions = threading.Event(), [], []
    lock = threading.Lock()

    def hammer() -> None:
        channel, stub = _stub(server)
        with channel:
            while not stop.is_set():
                try:
                    response = stub.ModelInfer(_infer_request(), timeout=10)
                    with lock:
                        versions.append(response.model_version)
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{exc.code()}: {exc.details()}")

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    channel, stub = _stub(server)
    with channel:
        for version in ["1", "2", "1", "2", "1", "2"]:
            time.sleep(0.2)
            _load(stub, version)
    time.sleep(0.2)
    stop.set()
    for worker in workers:
        worker.join()
    assert failures == [], failures[:5]
    assert len(versions) > 100
    assert {"1", "2"} <= set(versions)
    stats = stub_stats(server)  # statistics of the version now serving
    assert set(stats) == {"2"}
    assert 0 < stats["2"] < len(versions)


def stub_stats(server: EdgecamServer) -> dict[str, int]:
    channel, stub = _stub(server)
    with channel:
        response = stub.ModelStatistics(oip.ModelStatisticsRequest(name="tiny"))
    return {s.version: s.inference_stats.success.count for s in response.model_stats}


def test_watched_repository_reloads_and_cameras_follow(
    start: Callable[..., EdgecamServer], repo: Path, onnx_builder: Callable[..., Path]
) -> None:
    server = start(repository_poll_seconds=0.2, cameras=[CameraConfig(name="cam", source="synthetic:fps=50")])
    with EdgecamClient(f"127.0.0.1:{server.grpc_port}") as client:
        first = next(iter(client.stream("cam")))
        assert first.model == "tiny"
        add_version(repo, "2", onnx_builder)
        deadline = time.monotonic() + 10
        while client.model_info("tiny", "").version != "2":
            client._model_info.clear()
            assert time.monotonic() < deadline, "the watcher did not load version 2"
            time.sleep(0.1)
    statuses = {c.name: c.status() for c in server.service.cameras()}
    assert statuses["cam"].model_version == "2"


def test_unload_refuses_a_model_that_cameras_use(start: Callable[..., EdgecamServer]) -> None:
    server = start(cameras=[CameraConfig(name="cam", source="synthetic:fps=5")])
    channel, stub = _stub(server)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="tiny"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cam" in caught.value.details()


def test_unload_and_load_again(start: Callable[..., EdgecamServer]) -> None:
    server = start()
    channel, stub = _stub(server)
    with channel:
        stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="tiny"))
        assert not stub.ModelReady(oip.ModelReadyRequest(name="tiny")).ready
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_infer_request())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        _load(stub)
        assert stub.ModelReady(oip.ModelReadyRequest(name="tiny")).ready


def test_a_repository_that_cannot_serve_anything_stops_start_up(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no model"):
        EdgecamServer(ServerSettings(grpc_port=0, metrics_port=0, model_repository=empty))
    shutil.rmtree(empty)
