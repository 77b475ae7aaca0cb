"""Malformed requests against a real `edgecam serve` process over loopback gRPC.

Hand-written cases pin the status and message of each kind of bad input; hypothesis then generates
requests (bench/reliability/oip_requests.py) that mix right and wrong parts. Whatever comes, the
server answers with a client-error status and a one-line message, never INTERNAL or UNKNOWN; a
ModelStreamInfer stream answers a bad message with an error response and goes on; and afterwards the
process is alive, live, and its camera still infers frames.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecam.models import fashion_cnn
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc
from edgecam.server.launcher import RunningServer, launch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from reliability.oip_requests import Target, infer_requests, valid_request

TARGET = Target("fashion_cnn", "image", "FP32", (1, 1, 28, 28), ("logits",))
# What a request may be answered with: success or the client's own mistake, never the server's.
CLIENT_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
BOUNDED = settings(
    max_examples=300,
    deadline=None,  # a loaded CI machine stretches single calls; the pytest timeout bounds the whole
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = launch(["--model", str(fashion_cnn.onnx_path()), "--camera", "cam=synthetic:fps=20"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(channel)


def _request(datatype: str = "FP32", shape: tuple[int, ...] = (1, 1, 28, 28)) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=TARGET.model)
    request.inputs.add(name="image", datatype=datatype, shape=list(shape))
    return request


def _raw(shape: tuple[int, ...], raw: bytes, datatype: str = "FP32") -> oip.ModelInferRequest:
    request = _request(datatype, shape)
    request.raw_input_contents.append(raw)
    return request


def _typed(datatype: str, field: str, values: list, shape: tuple[int, ...] = (1,)) -> oip.ModelInferRequest:
    request = _request(datatype, shape)
    getattr(request.inputs[0].contents, field).extend(values)
    return request


def _valid() -> oip.ModelInferRequest:
    return valid_request(TARGET, b"\x00" * 3136)


def _with(request: oip.ModelInferRequest, change: str) -> oip.ModelInferRequest:
    if change == "duplicate input":
        request.inputs.append(request.inputs[0])
        request.raw_input_contents.append(request.raw_input_contents[0])
    elif change == "duplicate output":
        request.outputs.add(name="logits")
        request.outputs.add(name="logits")
    elif change == "raw and typed":
        request.inputs[0].contents.fp32_contents.extend([0.0] * 784)
    elif change == "parameters":
        request.parameters["priority"].bool_param = True
        request.parameters["x"].string_param = "y"
    elif change == "two raw buffers":
        request.raw_input_contents.append(b"\x00" * 4)
    elif change == "empty name":
        request.inputs[0].name = ""
    return request


CASES = {
    # name: (request, code, words the message must hold)
    "count overflows int64 (raw)": (_raw((2**40, 2**40, 1, 1), b""), "INVALID_ARGUMENT", ["needs"]),
    "count overflows int64 x itemsize": (_raw((2**62, 4), b""), "INVALID_ARGUMENT", ["needs"]),
    # No element at all (a zero dimension), but numpy multiplies the others first (found by the bench).
    "zero dim after dims overflowing int64": (
        _typed("BOOL", "bool_contents", [], (2**63 - 1, 2**32, 2**31, 25, 0)),
        "INVALID_ARGUMENT",
        ["needs"],
    ),
    "count overflows int64 (typed)": (
        _typed("FP32", "fp32_contents", [1.0], (2**40, 2**40)),
        "INVALID_ARGUMENT",
        ["needs"],
    ),
    "INT8 value out of range": (_typed("INT8", "int_contents", [1000]), "INVALID_ARGUMENT", ["1000"]),
    "UINT8 value out of range": (_typed("UINT8", "uint_contents", [256]), "INVALID_ARGUMENT", ["256"]),
    "INT16 value out of range": (
        _typed("INT16", "int_contents", [0, -40000], (2,)),
        "INVALID_ARGUMENT",
        ["-40000", "position 1"],
    ),
    "UINT32 contents as INT64": (
        _typed("INT64", "uint_contents", [1]),
        "INVALID_ARGUMENT",
        ["int64_contents", "uint_contents"],
    ),
    "wrong contents field": (
        _typed("FP32", "int_contents", [1]),
        "INVALID_ARGUMENT",
        ["fp32_contents", "int_contents"],
    ),
    "BYTES raw": (_raw((1,), b"\x01\x00\x00\x00x", "BYTES"), "INVALID_ARGUMENT", ["BYTES"]),
    "BYTES typed": (_typed("BYTES", "bytes_contents", [b"x"]), "INVALID_ARGUMENT", ["BYTES"]),
    "negative dimension": (_raw((-1, 784), b"\x00" * 3136), "INVALID_ARGUMENT", ["negative", "-1"]),
    "more dimensions than numpy takes": (_raw((1,) * 70, b"\x00" * 4), "INVALID_ARGUMENT", ["70 dimensions"]),
    "short raw contents": (_raw((1, 1, 28, 28), b"\x00" * 3135), "INVALID_ARGUMENT", ["3135", "3136"]),
    "raw and typed at once": (_with(_valid(), "raw and typed"), "INVALID_ARGUMENT", ["raw or typed"]),
    "two raw buffers for one input": (_with(_valid(), "two raw buffers"), "INVALID_ARGUMENT", ["2 raw"]),
    "duplicate input": (_with(_valid(), "duplicate input"), "INVALID_ARGUMENT", ["'image'", "once"]),
    "duplicate output": (_with(_valid(), "duplicate output"), "INVALID_ARGUMENT", ["'logits'", "once"]),
    "empty input name": (_with(_valid(), "empty name"), "INVALID_ARGUMENT", ["''"]),
    "unknown model": (oip.ModelInferRequest(model_name="absent"), "NOT_FOUND", ["absent"]),
    "parameters of any type are ignored": (_with(_valid(), "parameters"), "OK", []),
}


def _code(stub: oip_grpc.GRPCInferenceServiceStub, request: oip.ModelInferRequest) -> tuple[str, str]:
    try:
        stub.ModelInfer(request, timeout=30)  # generous: CI machines run other suites beside this one
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_malformed_input_gets_its_status_and_a_one_line_message(
    stub: oip_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    request, expected, words = CASES[case]
    code, details = _code(stub, request)
    assert code == expected, f"{case}: {code} {details}"
    assert "\n" not in details
    assert all(word in details for word in words), details


def test_a_stream_answers_a_bad_message_and_goes_on(stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    bad = [CASES[case][0] for case in sorted(CASES) if CASES[case][1] != "OK"]
    sent = [_valid(), *bad, _valid()]
    for index, request in enumerate(sent):
        request.id = str(index)
    replies = list(stub.ModelStreamInfer(iter(sent), timeout=30))
    assert [r.infer_response.id for r in replies] == [str(i) for i in range(len(sent))]
    assert not replies[0].error_message and not replies[-1].error_message
    assert replies[-1].infer_response.raw_output_contents  # the stream still infers after the bad ones
    for reply in replies[1:-1]:
        assert reply.error_message and "\n" not in reply.error_message
        assert not reply.error_message.startswith("internal error"), reply.error_message


def test_camera_calls_with_odd_arguments(channel: grpc.Channel) -> None:
    cameras = v1_grpc.CameraServiceStub(channel)
    huge = cameras.StreamPredictions(v1.StreamPredictionsRequest(camera="cam", top_k=2**32 - 1), timeout=10)
    assert 1 <= len(next(huge).top_k) <= 10  # as many as the camera ranks, no error
    huge.cancel()
    unknown = cameras.StreamPredictions(v1.StreamPredictionsRequest(camera="nope"), timeout=10)
    with pytest.raises(grpc.RpcError) as streamed:
        next(unknown)
    with pytest.raises(grpc.RpcError) as unary:
        cameras.GetModelInfo(v1.GetModelInfoRequest(name="nope"), timeout=10)
    for caught in (streamed, unary):
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in caught.value.details()


def test_a_load_version_parameter_of_the_wrong_type_is_refused(
    stub: oip_grpc.GRPCInferenceServiceStub,
) -> None:
    request = oip.RepositoryModelLoadRequest(model_name=TARGET.model)
    request.parameters["version"].bool_param = True
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryModelLoad(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'version'" in caught.value.details() and "bool_param" in caught.value.details()


@BOUNDED
@given(data=st.data())
def test_generated_requests_get_client_errors_only(
    stub: oip_grpc.GRPCInferenceServiceStub, data: st.DataObject
) -> None:
    request = data.draw(infer_requests(TARGET))
    code, details = _code(stub, request)
    assert grpc.StatusCode[code] in CLIENT_CODES, f"{code}: {details}"
    assert "\n" not in details


@settings(BOUNDED, max_examples=60)
@given(data=st.data())
def test_generated_streams_answer_every_message(
    stub: oip_grpc.GRPCInferenceServiceStub, data: st.DataObject
) -> None:
    sent = data.draw(st.lists(infer_requests(TARGET), min_size=1, max_size=6))
    for index, request in enumerate(sent):
        request.id = str(index)
    replies = list(stub.ModelStreamInfer(iter(sent), timeout=30))
    assert [r.infer_response.id for r in replies] == [str(i) for i in range(len(sent))]
    for reply in replies:
        assert "\n" not in reply.error_message
        assert not reply.error_message.startswith("internal error"), reply.error_message


NAMES = st.one_of(st.just(TARGET.model), st.just("cam"), st.just(""), st.text(max_size=12))


@settings(BOUNDED, max_examples=150)
@given(
    call=st.sampled_from(
        ["ModelReady", "ModelMetadata", "ModelStatistics", "GetModelInfo", "StreamPredictions"]
    ),
    name=NAMES,
    version=st.one_of(st.just(""), st.just("1"), st.text(max_size=6)),
    top_k=st.integers(0, 2**32 - 1),
)
def test_generated_names_in_the_other_calls_get_client_errors_only(
    channel: grpc.Channel, call: str, name: str, version: str, top_k: int
) -> None:
    inference, cameras = oip_grpc.GRPCInferenceServiceStub(channel), v1_grpc.CameraServiceStub(channel)
    code, details = "OK", ""
    try:
        if call == "StreamPredictions":
            stream = cameras.StreamPredictions(
                v1.StreamPredictionsRequest(camera=name, top_k=top_k), timeout=30
            )
            next(stream)
            stream.cancel()
        elif call == "GetModelInfo":
            cameras.GetModelInfo(v1.GetModelInfoRequest(name=name, version=version), timeout=30)
        else:
            request = getattr(oip, f"{call}Request")(name=name, version=version)
            getattr(inference, call)(request, timeout=30)
    except grpc.RpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    assert grpc.StatusCode[code] in CLIENT_CODES, f"{call}({name!r}, {version!r}): {code} {details}"
    assert "\n" not in details


def test_after_all_that_the_server_is_live_and_its_camera_runs(
    server: RunningServer, channel: grpc.Channel, stub: oip_grpc.GRPCInferenceServiceStub
) -> None:
    # Module order: this runs after the generated requests above.
    assert server.process.poll() is None
    assert stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
    cameras = v1_grpc.CameraServiceStub(channel)
    first = cameras.ListCameras(v1.ListCamerasRequest(), timeout=5).cameras[0].frames_inferred
    time.sleep(0.5)
    then = cameras.ListCameras(v1.ListCamerasRequest(), timeout=5).cameras[0]
    assert then.up and then.frames_inferred > first
    assert not [line for line in server.log if "Traceback" in line or "unexpected error" in line]
