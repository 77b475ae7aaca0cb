"""Thin grpc.aio servicers: proto in, EdgeService call, proto out. Errors map in status.py.

Every call is a coroutine on the server's one event loop, so a prediction stream costs a
suspended coroutine, not a thread: streams cannot take the workers unary calls and health checks
need. Anything that computes or touches the disk (inference, repository loads) runs in the bounded
`executor`, so the loop stays free to answer health checks while a model runs.

ModelInfer and ModelStreamInfer are registered without a request deserializer (`handlers`): they get
the request's bytes and reserve memory for them from the budget before parsing (server/budget.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc
from edgecam.server.budget import MemoryBudget, decoded_cost, wire_cost
from edgecam.server.errors import InvalidArgument, ServerError
from edgecam.server.grpc import converters
from edgecam.server.grpc.status import maps_errors
from edgecam.server.service import EdgeService

log = logging.getLogger(__name__)

T = TypeVar("T")
Context = grpc.aio.ServicerContext

# Methods that receive their request as bytes: the memory budget is charged before parsing.
RAW_REQUESTS = frozenset({"ModelInfer", "ModelStreamInfer"})


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """KServe v2 / Open Inference Protocol."""

    def __init__(self, service: EdgeService, executor: Executor, budget: MemoryBudget) -> None:
        self._service = service
        self._executor = executor
        self._budget = budget

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    @maps_errors
    async def ServerLive(self, request: oip.ServerLiveRequest, context: Context) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=self._service.live())

    @maps_errors
    async def ServerReady(self, request: oip.ServerReadyRequest, context: Context) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._service.ready())

    @maps_errors
    async def ModelReady(self, request: oip.ModelReadyRequest, context: Context) -> oip.ModelReadyResponse:
        return oip.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version))

    @maps_errors
    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Context
    ) -> oip.ServerMetadataResponse:
        name, version, extensions = self._service.server_metadata()
        return oip.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @maps_errors
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        return converters.model_metadata(self._service.model(request.name, request.version))

    @maps_errors
    async def ModelInfer(self, request: bytes, context: Context) -> oip.ModelInferResponse:
        with self._budget.reserve(wire_cost(len(request)), "ModelInfer request") as reservation:
            return await self._run(self._infer, request, reservation)

    def _infer(self, raw: bytes, reservation: Any) -> oip.ModelInferResponse:
        """On the executor: parse, reserve the decoded size, decode, run, encode."""
        request = _parse(raw)
        reservation.grow(decoded_cost(request))
        return converters.infer_response(self._service.infer(converters.infer_request(request)))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[oip.ModelStreamInferResponse]:
        # Errors travel in the response (Triton's convention) so one bad request keeps the stream.
        async for raw in request_iterator:
            try:
                with self._budget.reserve(wire_cost(len(raw)), "ModelStreamInfer request") as reservation:
                    response = await self._run(self._infer, raw, reservation)
                yield oip.ModelStreamInferResponse(infer_response=response)
            except ServerError as exc:
                yield oip.ModelStreamInferResponse(
                    error_message=str(exc), infer_response=oip.ModelInferResponse(id=_request_id(raw))
                )

    @maps_errors
    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: Context
    ) -> oip.ModelStatisticsResponse:
        stats = self._service.model_statistics(request.name, request.version)
        memory = {(m.name, m.version): m.runtime.memory_bytes() for m in self._service.models()}
        return converters.model_statistics(stats, memory)

    @maps_errors
    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: Context
    ) -> oip.RepositoryIndexResponse:
        entries = await self._run(self._service.repository.index, request.ready)
        return converters.repository_index(entries)

    @maps_errors
    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: Context
    ) -> oip.RepositoryModelLoadResponse:
        version = request.parameters["version"].string_param if "version" in request.parameters else None
        await self._run(self._service.repository.load, request.model_name, version or None)
        return oip.RepositoryModelLoadResponse()

    @maps_errors
    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: Context
    ) -> oip.RepositoryModelUnloadResponse:
        await self._run(self._service.unload_model, request.model_name)
        return oip.RepositoryModelUnloadResponse()


class CameraServicer(v1_grpc.CameraServiceServicer):
    """edgecam.v1: cameras and their live predictions."""

    def __init__(self, service: EdgeService) -> None:
        self._service = service

    @maps_errors
    async def ListCameras(self, request: v1.ListCamerasRequest, context: Context) -> v1.ListCamerasResponse:
        return v1.ListCamerasResponse(
            cameras=[converters.camera_status(c.status()) for c in self._service.cameras()]
        )

    @maps_errors
    async def StreamPredictions(
        self, request: v1.StreamPredictionsRequest, context: Context
    ) -> AsyncIterator[v1.Prediction]:
        async for prediction in self._service.stream_predictions(request.camera):
            yield converters.prediction(prediction, request.top_k)

    @maps_errors
    async def GetModelInfo(self, request: v1.GetModelInfoRequest, context: Context) -> v1.ModelInfo:
        return converters.model_info(self._service.model(request.name, request.version))


def _parse(raw: bytes) -> oip.ModelInferRequest:
    try:
        return oip.ModelInferRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidArgument(
            f"the request is not a valid inference.ModelInferRequest message ({len(raw)} bytes): {exc}"
        ) from None


def _request_id(raw: bytes) -> str:
    try:
        return oip.ModelInferRequest.FromString(raw).id
    except DecodeError:
        return ""


def handlers(service_name: str, servicer: object, module: Any) -> dict[str, grpc.RpcMethodHandler]:
    """The method handlers of `service_name` (messages from protobuf `module`), as the generated
    add_*_to_server builds them, except that RAW_REQUESTS methods get their request as bytes."""
    descriptor = module.DESCRIPTOR.services_by_name[service_name.rpartition(".")[2]]
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    built = {}
    for method in descriptor.methods:
        request_type = getattr(module, method.input_type.name)
        response_type = getattr(module, method.output_type.name)
        make = kinds[(method.client_streaming, method.server_streaming)]
        built[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=None if method.name in RAW_REQUESTS else request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
    return built
