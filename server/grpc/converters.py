"""Protobuf ⇄ domain objects. No rules live here beyond the wire format itself."""

from __future__ import annotations

from collections.abc import Sequence

from edgecam.model import TensorSpec
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.server.errors import InvalidArgument
from edgecam.server.grpc.wire import encode_infer_response
from edgecam.server.pipeline import CameraStatus, Prediction
from edgecam.server.repository import ModelEntry
from edgecam.server.runtime.base import LoadedModel
from edgecam.server.service import InferRequest, InferResponse, Tensor, decode_tensor, typed_tensor
from edgecam.server.statistics import Duration, ModelStats

# Which InferTensorContents field carries which datatype (FP16 has none: it must come raw).
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def infer_request(
    request: oip.ModelInferRequest, raw_contents: Sequence[bytes | memoryview] | None = None
) -> InferRequest:
    """The request in domain terms; `raw_contents` stands in for its raw_input_contents where they
    were kept out of the message (server/grpc/wire.py: views, not copies)."""
    raw = request.raw_input_contents if raw_contents is None else raw_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input, in order"
        )
    if raw and (both := [t.name for t in request.inputs if t.contents.ListFields()]):
        raise InvalidArgument(
            f"inputs {both} have typed contents while the request carries raw_input_contents; "
            "send every input one way, raw or typed"
        )
    tensors = [
        decode_tensor(t.name, t.datatype, list(t.shape), raw[i]) if raw else _typed_tensor(t)
        for i, t in enumerate(request.inputs)
    ]
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=tensors,
        requested_outputs=[o.name for o in request.outputs],
    )


def _typed_tensor(t: oip.ModelInferRequest.InferInputTensor) -> Tensor:
    field = _TYPED_FIELD.get(t.datatype)
    if field is None:
        raise InvalidArgument(
            f"input {t.name!r}: datatype {t.datatype!r} cannot be sent in typed contents; "
            f"use raw_input_contents (typed: {sorted(_TYPED_FIELD)})"
        )
    others = [f.name for f, _ in t.contents.ListFields() if f.name != field]
    if others:
        raise InvalidArgument(
            f"input {t.name!r}: datatype {t.datatype} goes in contents.{field}, the request filled "
            f"contents.{', contents.'.join(others)}"
        )
    return typed_tensor(t.name, t.datatype, list(t.shape), getattr(t.contents, field), field)


def load_version(request: oip.RepositoryModelLoadRequest) -> str | None:
    """The version a RepositoryModelLoad asks for (parameter "version"); None: the newest."""
    if "version" not in request.parameters:
        return None
    parameter = request.parameters["version"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind == "int64_param":
        return str(parameter.int64_param)
    if kind != "string_param":
        raise InvalidArgument(
            f"parameter 'version' came as {kind or 'an empty parameter'}; send it as string_param "
            '(e.g. "3") or int64_param'
        )
    return parameter.string_param or None


def infer_response(response: InferResponse) -> bytes:
    """The serialized ModelInferResponse, outputs as raw contents (appended without copies: wire.py)."""
    message = oip.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
    return encode_infer_response(message, [tensor.data for tensor in response.outputs])


def model_metadata(model: LoadedModel) -> oip.ModelMetadataResponse:
    def meta(spec: TensorSpec) -> oip.ModelMetadataResponse.TensorMetadata:
        return oip.ModelMetadataResponse.TensorMetadata(
            name=spec.name,
            datatype=spec.datatype,
            shape=list(spec.shape),
        )

    return oip.ModelMetadataResponse(
        name=model.name,
        versions=[model.version],
        platform=model.platform,
        inputs=[meta(s) for s in model.inputs],
        outputs=[meta(s) for s in model.outputs],
    )


def model_info(model: LoadedModel) -> v1.ModelInfo:
    return v1.ModelInfo(
        name=model.name,
        version=model.version,
        platform=model.platform,
        preprocessing_json=model.preprocessing.model_dump_json(),
        postprocessing_json=model.postprocessing.model_dump_json(),
        labels=model.labels,
    )


def prediction(p: Prediction, top_k: int = 0) -> v1.Prediction:
    ranked = p.top_k[:top_k] if top_k else p.top_k
    return v1.Prediction(
        camera=p.camera,
        frame_index=p.frame_index,
        capture_time=p.captured_at,
        inference_time=p.inferred_at,
        top_k=[v1.LabelScore(index=r.index, label=r.label, score=r.score) for r in ranked],
        latency=[v1.StageLatency(stage=k, seconds=v) for k, v in p.latency.items()],
        model_name=p.model_name,
        model_version=p.model_version,
        has_label=p.label is not None,
        label_index=p.label or 0,
    )


def camera_status(s: CameraStatus) -> v1.CameraStatus:
    return v1.CameraStatus(
        name=s.name,
        source=s.source,
        up=s.up,
        model_name=s.model_name,
        model_version=s.model_version,
        frames_inferred=s.frames_inferred,
        frames_dropped=s.frames_dropped,
        fps=s.fps,
        last_frame_age_seconds=s.last_frame_age_seconds if s.last_frame_age_seconds is not None else -1.0,
    )


def _duration(d: Duration) -> oip.StatisticDuration:
    return oip.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(
    stats: list[ModelStats], memory: dict[tuple[str, str], int]
) -> oip.ModelStatisticsResponse:
    return oip.ModelStatisticsResponse(
        model_stats=[
            oip.ModelStatistics(
                name=s.name,
                version=s.version,
                last_inference=s.last_inference_ms,
                inference_count=s.success.count,
                execution_count=s.success.count,
                inference_stats=oip.InferStatistics(
                    success=_duration(s.success),
                    fail=_duration(s.fail),
                    compute_infer=_duration(s.compute_infer),
                ),
                memory_usage=[
                    oip.MemoryUsage(type="CPU", id=0, byte_size=memory.get((s.name, s.version), 0))
                ],
            )
            for s in stats
        ]
    )


def repository_index(entries: list[ModelEntry]) -> oip.RepositoryIndexResponse:
    return oip.RepositoryIndexResponse(
        models=[
            oip.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason
            )
            for e in entries
        ]
    )
