"""Hypothesis strategies for KServe v2 ModelInferRequests aimed at one model: valid, nearly valid, malformed.

Each request mixes right and wrong parts (names, datatypes, shapes whose element count overflows
int64, negative or huge dimensions, integers outside their datatype, the wrong contents field, raw
and typed contents together, raw counts that do not match the inputs, parameters of every type),
so a run covers every check the server makes and the combinations a hand-written list misses.
Messages stay small: the largest raw tensor is the model's own input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import strategies as st

from edgecam.datatypes import KSERVE_DATATYPES
from edgecam.proto.inference import grpc_service_pb2 as oip

_INT64 = (-(2**63), 2**63 - 1)
_TYPED_FIELDS = {  # contents field -> strategy of values within the wire type's own range
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(*_INT64),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32, allow_nan=True),
    "fp64_contents": st.floats(allow_nan=True),
    "bytes_contents": st.binary(max_size=8),
}


@dataclass(frozen=True)
class Target:
    """The model the requests aim at: one input, as its metadata describes it."""

    model: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    outputs: tuple[str, ...]

    @property
    def raw_size(self) -> int:
        return math.prod(self.shape) * {"FP16": 2, "FP32": 4, "FP64": 8}.get(self.datatype, 4)


def _dimension() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 30),
        st.integers(*_INT64),  # negative, and huge ones whose product overflows int64
        st.sampled_from([-1, 2**31, 2**32, 2**62, 2**63 - 1]),
    )


def _shape(target: Target) -> st.SearchStrategy[list[int]]:
    return st.one_of(
        st.just(list(target.shape)),
        st.lists(_dimension(), max_size=6),
        # Element counts that wrap to 0 in int64 arithmetic, byte counts included: with empty
        # contents they pass a size check made with numpy's integers.
        st.sampled_from([[2**32, 2**32], [2**62, 4], [2**40, 2**40, 1, 1], [2**63 - 1, 2]]),
        st.lists(st.just(1), min_size=33, max_size=80),  # more dimensions than numpy allows
    )


def _name(right: str) -> st.SearchStrategy[str]:
    return st.one_of(st.just(right), st.just(""), st.text(max_size=12))


def _parameters() -> st.SearchStrategy[dict[str, oip.InferParameter]]:
    value = st.one_of(
        st.builds(oip.InferParameter, bool_param=st.booleans()),
        st.builds(oip.InferParameter, int64_param=st.integers(*_INT64)),
        st.builds(oip.InferParameter, string_param=st.text(max_size=12)),
        st.builds(oip.InferParameter, double_param=st.floats()),
        st.builds(oip.InferParameter, uint64_param=st.integers(0, 2**64 - 1)),
        st.just(oip.InferParameter()),
    )
    return st.dictionaries(
        st.sampled_from(["priority", "timeout", "binary_data_output", "sequence_id", "x"]), value, max_size=3
    )


@st.composite
def _input(
    draw: st.DrawFn, target: Target, raw: bool
) -> tuple[oip.ModelInferRequest.InferInputTensor, bytes]:
    tensor = oip.ModelInferRequest.InferInputTensor(
        name=draw(_name(target.input_name)),
        datatype=draw(st.sampled_from([target.datatype, *KSERVE_DATATYPES, "BYTES", "", "fp32"])),
        shape=draw(_shape(target)),
    )
    for key, value in draw(_parameters()).items():
        tensor.parameters[key].CopyFrom(value)
    payload = b""
    if raw:
        payload = draw(
            st.one_of(
                st.just(b"\x00" * target.raw_size),
                st.binary(min_size=target.raw_size, max_size=target.raw_size),
                st.binary(max_size=64),
                st.just(b""),
            )
        )
    if not raw or draw(st.integers(0, 9)) == 0:  # typed contents; now and then both ways at once
        field = draw(st.sampled_from(sorted(_TYPED_FIELDS)))
        count = math.prod(target.shape)
        values = draw(
            st.one_of(
                st.lists(_TYPED_FIELDS[field], max_size=8),
                st.lists(_TYPED_FIELDS[field], min_size=count, max_size=count),
            )
        )
        getattr(tensor.contents, field).extend(values)
        if draw(st.booleans()):  # a shape that fits the values, so the checks behind the count run
            tensor.shape[:] = [len(values)]
    return tensor, payload


@st.composite
def infer_requests(draw: st.DrawFn, target: Target) -> oip.ModelInferRequest:
    """One ModelInferRequest for `target`: about one in five valid, the others wrong in one or more ways."""
    if draw(st.integers(0, 4)) == 0:
        return valid_request(target, draw(st.binary(min_size=target.raw_size, max_size=target.raw_size)))
    request = oip.ModelInferRequest(
        model_name=draw(st.one_of(st.just(target.model), st.text(max_size=12))),
        model_version=draw(st.sampled_from(["", "1", "0", "-1", "999999999999999999999", "../1"])),
        id=draw(st.text(max_size=8)),
    )
    raw = draw(st.booleans())
    inputs = draw(st.lists(_input(target, raw), max_size=3))
    for tensor, _ in inputs:
        request.inputs.append(tensor)
    if raw:
        payloads = [payload for _, payload in inputs]
        extra = draw(st.sampled_from([0, 0, 0, 1, -1]))  # now and then one raw buffer too many or few
        request.raw_input_contents.extend(payloads[: max(0, len(payloads) + extra)])
        if extra > 0:
            request.raw_input_contents.append(b"\x00" * 4)
    for name in draw(st.lists(_name(target.outputs[0] if target.outputs else ""), max_size=3)):
        request.outputs.add(name=name)
    for key, value in draw(_parameters()).items():
        request.parameters[key].CopyFrom(value)
    return request


def valid_request(target: Target, raw: bytes) -> oip.ModelInferRequest:
    """A request the model accepts (any bytes are valid floats, NaN included)."""
    request = oip.ModelInferRequest(model_name=target.model)
    request.inputs.add(name=target.input_name, datatype=target.datatype, shape=list(target.shape))
    request.raw_input_contents.append(raw)
    return request
