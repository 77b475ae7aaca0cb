"""ModelInfer requests off the wire and responses onto it without copying their raw tensors.

protobuf's Python messages (upb) copy a `bytes` field when the message is parsed and again on every
read of it: a 64 MiB raw_input_contents cost three 64 MiB copies between the socket and numpy (parse,
the memory budget's count, the decoder), ~70 ms each on this project's 2-core VM, all while holding
the GIL, which is what the camera threads starved on while large requests were served. Here the
top-level fields of the serialized request are walked once (a handful of tags: the tensors are
skipped over by their length), raw_input_contents become memoryviews into the bytes gRPC handed us,
and only the other fields (names, shapes, parameters: small) go through protobuf.

Anything the walk does not understand is left to protobuf: the whole message is parsed the ordinary
way, so a malformed request gets protobuf's own verdict.

Responses the other way round: the message without its raw outputs is serialized by protobuf, and
each output's bytes are appended as a raw_output_contents field straight from the array (protobuf
would have copied it three times: tobytes, into the message, and out again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.server.errors import InvalidArgument

_RAW_INPUT_CONTENTS = oip.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_RAW_OUTPUT_CONTENTS = oip.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number
_STREAM_INFER_RESPONSE = oip.ModelStreamInferResponse.DESCRIPTOR.fields_by_name["infer_response"].number
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


@dataclass
class WireRequest:
    """A parsed request whose raw tensors are views into the received bytes (never copies)."""

    message: oip.ModelInferRequest  # every field but raw_input_contents
    raw_contents: list[memoryview]  # raw_input_contents, in order


def parse_infer_request(raw: bytes) -> WireRequest:
    """Parse a serialized ModelInferRequest; INVALID_ARGUMENT when it is not one."""
    split = _split(raw)
    if split is None:  # not a layout the walk knows: protobuf decides, and copies
        message = _parse(raw)
        return WireRequest(message, [memoryview(b) for b in message.raw_input_contents])
    rest, contents = split
    return WireRequest(_parse(rest, len(raw)), contents)


def _parse(raw: bytes, size: int | None = None) -> oip.ModelInferRequest:
    try:
        return oip.ModelInferRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidArgument(
            f"the request is not a valid inference.ModelInferRequest message "
            f"({len(raw) if size is None else size} bytes): {exc}"
        ) from None


def _split(raw: bytes) -> tuple[bytes, list[memoryview]] | None:
    """(the other fields re-serialized, the raw tensors as views), or None where the bytes are not a
    sequence of well-formed top-level fields."""
    view = memoryview(raw)
    rest: list[memoryview] = []
    contents: list[memoryview] = []
    position, end = 0, len(raw)
    while position < end:
        start = position
        tag, position = _varint(view, position)
        field, wire_type = tag >> 3, tag & 7
        if tag < 0 or field == 0:
            return None
        if wire_type == _VARINT:
            _, position = _varint(view, position)
        elif wire_type == _FIXED64:
            position += 8
        elif wire_type == _FIXED32:
            position += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(view, position)
            if length < 0 or position + length > end:
                return None
            if field == _RAW_INPUT_CONTENTS:
                contents.append(view[position : position + length])
                position += length
                continue
            position += length
        else:  # groups (3, 4) and the unused types 6, 7: rare enough to leave to protobuf
            return None
        if position > end or (field == _RAW_INPUT_CONTENTS):  # raw contents not length-delimited
            return None
        rest.append(view[start:position])
    return b"".join(rest), contents


def _varint(view: memoryview, position: int) -> tuple[int, int]:
    """The varint at `position` and the position after it; (-1, …) when it is cut off or too long."""
    value = shift = 0
    end = len(view)
    while position < end and shift < 64:
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    return -1, end + 1


def encode_infer_response(message: oip.ModelInferResponse, raw_outputs: Sequence[np.ndarray]) -> bytes:
    """`message` (without raw_output_contents) with each array appended as one, serialized: the
    bytes protobuf would produce for the whole message (its fields in number order), copied once."""
    parts: list[bytes | memoryview] = [message.SerializeToString()]
    for array in raw_outputs:
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        data = np.ascontiguousarray(little).data.cast("B")
        parts += [_length_delimited_key(_RAW_OUTPUT_CONTENTS), _varint_bytes(data.nbytes), data]
    return b"".join(parts)


def encode_stream_response(infer_response: bytes) -> bytes:
    """A ModelStreamInferResponse carrying a serialized ModelInferResponse (no error message)."""
    return b"".join(
        (_length_delimited_key(_STREAM_INFER_RESPONSE), _varint_bytes(len(infer_response)), infer_response)
    )


def _length_delimited_key(field: int) -> bytes:
    return _varint_bytes(field << 3 | _LENGTH_DELIMITED)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
