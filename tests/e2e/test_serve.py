"""The whole path over real sockets: compiled artifact → `edgecam serve` → gRPC → client."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgecam.client.client import EdgecamClient, EdgecamClientError
from edgecam.models import fashion_cnn
from edgecam.preprocessing import Preprocessing, preprocess
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.server.launcher import RunningServer, launch


def test_synthetic_camera_streams_accurate_predictions(server: RunningServer) -> None:
    with EdgecamClient(server.grpc_address) as client:
        client.wait_ready()
        predictions = list(itertools.islice(client.stream("synth"), 200))
    labelled = [p for p in predictions if p.label is not None]
    assert len(labelled) == 200
    accuracy = sum(p.top_k[0].index == p.label for p in labelled) / len(labelled)
    assert accuracy >= 0.85, f"streamed top-1 accuracy {accuracy:.3f} < 0.85"
    indices = [p.frame_index for p in predictions]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    first = predictions[0]
    assert {"capture", "preprocess", "infer", "postprocess", "total"} <= set(first.latency)
    assert first.top_k[0].label in fashion_cnn.LABELS
    assert first.capture_time <= first.inference_time


def test_video_file_camera_streams(server: RunningServer, video_file: tuple[Path, np.ndarray]) -> None:
    _, labels = video_file
    with EdgecamClient(server.grpc_address) as client:
        predictions = list(itertools.islice(client.stream("video"), 30))
    assert [p.camera for p in predictions] == ["video"] * 30
    # MJPG is lossy, but the bundled model should still recognise most recorded images. The file
    # loops and frames can be dropped, so score each prediction against the label of its frame.
    hits = sum(p.top_k[0].index == labels[p.frame_index % len(labels)] for p in predictions)
    assert hits >= 0.7 * len(predictions), f"only {hits}/30 video frames classified right"


def test_cameras_report_health(server: RunningServer) -> None:
    with EdgecamClient(server.grpc_address) as client:
        cameras = {c.name: c for c in client.cameras()}
    assert set(cameras) == {"synth", "video", "lost"}
    assert cameras["synth"].up and cameras["synth"].frames_inferred > 0
    assert not cameras["lost"].up and cameras["lost"].frames_inferred == 0
    assert "127.0.0.1:9" in cameras["lost"].source


def test_classify_matches_onnxruntime(server: RunningServer) -> None:
    import onnxruntime as ort

    images, _ = fashion_cnn.load_samples()
    session = ort.InferenceSession(str(fashion_cnn.onnx_path()), providers=["CPUExecutionProvider"])
    with EdgecamClient(server.grpc_address) as client:
        info = client.model_info("fashion_cnn")
        for image in images[:20]:
            expected = session.run(None, {"image": preprocess(image, info.preprocessing)})[0]
            got = client.infer("fashion_cnn", {"image": preprocess(image, info.preprocessing)})["logits"]
            np.testing.assert_allclose(got, expected, atol=1e-4)
            assert client.classify("fashion_cnn", image)[0].index == int(expected.argmax())


_TRITON_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tc
address, path = sys.argv[1], sys.argv[2]
client = tc.InferenceServerClient(address)
meta = client.get_model_metadata("fashion_cnn")
result = {"live": client.is_server_live(), "ready": client.is_server_ready(),
          "model_ready": client.is_model_ready("fashion_cnn"), "platform": meta.platform,
          "inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs],
          "server": client.get_server_metadata().name, "top1": []}
for tensor in np.load(path):
    inp = tc.InferInput("image", list(tensor.shape), "FP32")
    inp.set_data_from_numpy(tensor)
    out = client.infer("fashion_cnn", [inp], outputs=[tc.InferRequestedOutput("logits")])
    result["top1"].append(int(out.as_numpy("logits").argmax()))
print(json.dumps(result))
"""


def test_tritonclient_agrees_with_onnxruntime(server: RunningServer, tmp_path: Path) -> None:
    """A standard KServe v2 client (in its own process) gets the same top-1 as ONNX Runtime."""
    import json

    import onnxruntime as ort

    images, _ = fashion_cnn.load_samples()
    spec = _bundled_preprocessing()
    tensors = np.stack([preprocess(image, spec) for image in images[:100]])
    np.save(tmp_path / "batch.npy", tensors)
    session = ort.InferenceSession(str(fashion_cnn.onnx_path()), providers=["CPUExecutionProvider"])
    expected = [int(session.run(None, {"image": t})[0].argmax()) for t in tensors]
    out = subprocess.run(
        [sys.executable, "-c", _TRITON_SCRIPT, server.grpc_address, str(tmp_path / "batch.npy")],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(out.stdout)
    assert result["live"] and result["ready"] and result["model_ready"]
    assert result["server"] == "edgecam"
    assert result["platform"].startswith("tvm_")
    assert result["inputs"] == [["image", "FP32", [1, 1, 28, 28]]]
    assert result["top1"] == expected


def _bundled_preprocessing() -> Preprocessing:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(fashion_cnn.onnx_path())).metadata_props}
    return Preprocessing.model_validate_json(meta["edgecam.preprocessing"])


def _raw_request(**overrides: object) -> oip.ModelInferRequest:
    fields: dict[str, object] = {"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28]}
    raw = overrides.pop("raw", np.zeros((1, 1, 28, 28), np.float32).tobytes())
    model = overrides.pop("model", "fashion_cnn")
    fields.update(overrides)
    request = oip.ModelInferRequest(model_name=str(model))
    request.inputs.add(**fields)  # type: ignore[arg-type]
    request.raw_input_contents.append(raw)  # type: ignore[arg-type]
    return request


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (_raw_request(name="img"), grpc.StatusCode.INVALID_ARGUMENT, ["'image'", "img"]),
        (_raw_request(shape=[1, 28, 28]), grpc.StatusCode.INVALID_ARGUMENT, ["shape", "[1, 1, 28, 28]"]),
        (
            _raw_request(datatype="FP64", raw=np.zeros(784).tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT,
            ["FP64", "FP32"],
        ),
        (_raw_request(raw=b"\x00" * 100), grpc.StatusCode.INVALID_ARGUMENT, ["100 bytes", "3136"]),
        (_raw_request(datatype="COMPLEX"), grpc.StatusCode.INVALID_ARGUMENT, ["COMPLEX", "FP32"]),
        (_raw_request(model="nope"), grpc.StatusCode.NOT_FOUND, ["nope", "fashion_cnn"]),
    ],
    ids=["name", "shape", "datatype", "bytesize", "unknown-datatype", "unknown-model"],
)
def test_malformed_requests_get_a_status_and_the_server_keeps_serving(
    server: RunningServer, request_: oip.ModelInferRequest, code: grpc.StatusCode, words: list[str]
) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request_, timeout=10)
        assert caught.value.code() == code
        for word in words:
            assert word in caught.value.details(), caught.value.details()
        good = stub.ModelInfer(_raw_request(), timeout=10)
        assert good.outputs[0].name == "logits"


def test_unknown_camera_is_not_found(server: RunningServer) -> None:
    with EdgecamClient(server.grpc_address) as client, pytest.raises(EdgecamClientError) as caught:
        next(iter(client.stream("backyard")))
    assert caught.value.code == "NOT_FOUND"
    assert "backyard" in str(caught.value) and "synth" in str(caught.value)


def test_stream_infer_reports_errors_in_band(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        responses = list(
            stub.ModelStreamInfer(iter([_raw_request(), _raw_request(name="x"), _raw_request()]), timeout=30)
        )
    assert [bool(r.error_message) for r in responses] == [False, True, False]
    assert "'image'" in responses[1].error_message


def test_corrupt_artifact_is_refused_naming_the_check(bundled_artifact: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundled_artifact, broken)
    library = next(p for p in broken.iterdir() if p.suffix == ".so")
    library.write_bytes(library.read_bytes()[:-16] + b"\x00" * 16)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as caught:
        launch(["--model", str(broken), "--camera", "synth=synthetic"], timeout=60)
    assert "sha256" in str(caught.value)
    assert time.monotonic() - started < 60
