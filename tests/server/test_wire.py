"""server/grpc/wire.py reads ModelInferRequest as protobuf does, without copying the raw tensors."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.server.errors import InvalidArgument
from edgecam.server.grpc.wire import encode_infer_response, encode_stream_response, parse_infer_request


def _request() -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="vsum", model_version="2", id="req-7")
    request.parameters["priority"].int64_param = 3
    for name, array in (("x", np.arange(12, dtype=np.float32)), ("mask", np.ones(5, np.uint8))):
        datatype = "FP32" if array.dtype == np.float32 else "UINT8"
        request.inputs.add(name=name, datatype=datatype, shape=[array.size])
        request.raw_input_contents.append(array.tobytes())
    request.outputs.add(name="y")
    return request


def _same_as_protobuf(raw: bytes) -> None:
    """parse_infer_request agrees with protobuf on `raw`: both refuse it, or both read the same fields."""
    try:
        expected = oip.ModelInferRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(InvalidArgument, match=r"not a valid inference\.ModelInferRequest"):
            parse_infer_request(raw)
        return
    parsed = parse_infer_request(raw)
    assert [bytes(view) for view in parsed.raw_contents] == list(expected.raw_input_contents)
    expected.ClearField("raw_input_contents")
    assert parsed.message == expected


def test_raw_tensors_are_views_of_the_received_bytes() -> None:
    raw = _request().SerializeToString()
    parsed = parse_infer_request(raw)
    assert not parsed.message.raw_input_contents  # kept out of the message: no copy made there
    assert [view.obj is raw for view in parsed.raw_contents] == [True, True]
    x = np.frombuffer(parsed.raw_contents[0], dtype=np.float32)
    assert np.shares_memory(x, np.frombuffer(raw, dtype=np.uint8))
    np.testing.assert_array_equal(x, np.arange(12, dtype=np.float32))
    _same_as_protobuf(raw)


def test_fields_in_any_order_and_unknown_fields_read_as_protobuf_reads_them() -> None:
    request = _request()
    raw = request.SerializeToString()
    # Raw contents first, then the rest: protobuf accepts fields in any order.
    contents = oip.ModelInferRequest(raw_input_contents=request.raw_input_contents).SerializeToString()
    request.ClearField("raw_input_contents")
    reordered = contents + request.SerializeToString()
    _same_as_protobuf(reordered)
    # Fields 101-103 (no such field): a varint, a fixed64 and a fixed32.
    unknown = b"\xa8\x06\x05" + b"\xb1\x06" + bytes(8) + b"\xbd\x06" + bytes(4) + raw
    _same_as_protobuf(unknown)
    kept = unknown_fields.UnknownFieldSet(parse_infer_request(unknown).message)
    assert sorted(field.field_number for field in kept) == [101, 102, 103]


def test_every_truncation_is_judged_as_protobuf_judges_it() -> None:
    raw = _request().SerializeToString()
    for cut in range(len(raw)):
        _same_as_protobuf(raw[:cut])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_judged_as_protobuf_judges_them(raw: bytes) -> None:
    _same_as_protobuf(raw)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_a_corrupted_byte_is_judged_as_protobuf_judges_it(at: int, value: int) -> None:
    raw = bytearray(_request().SerializeToString())
    raw[at % len(raw)] = value
    _same_as_protobuf(bytes(raw))


@pytest.mark.parametrize("dtype", [np.float32, np.dtype(">i4"), np.uint8, np.float16, bool])
def test_responses_are_the_bytes_protobuf_writes(dtype: np.dtype) -> None:
    outputs = [np.arange(24).reshape(2, 3, 4).astype(dtype), np.arange(5).astype(dtype)[::2]]  # one strided
    message = oip.ModelInferResponse(model_name="m", model_version="1", id="r")
    expected = oip.ModelInferResponse()
    expected.CopyFrom(message)
    for array in outputs:
        expected.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    encoded = encode_infer_response(message, outputs)
    assert encoded == expected.SerializeToString()
    stream = oip.ModelStreamInferResponse.FromString(encode_stream_response(encoded))
    assert stream.infer_response == expected and not stream.error_message
