"""Thin grpc.aio servicers: proto in, EdgeService call, proto out. Errors map in status.py.

Every call is a coroutine on the server's one event loop, so a prediction stream costs a
suspended coroutine, not a thread: streams cannot take the workers unary calls and health checks
need. Anything that computes or touches the disk (inference, repository loads) runs in the bounded
`executor`, so the loop stays free to answer health checks while a model runs.

ModelInfer and ModelStreamInfer read their requests themselves, as bytes (`handlers`), each only
once the memory budget has room for it (server/budget.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc
from edgecam.server.budget import MemoryBudget, Reservation, decoded_cost, receive_cost, wire_cost
from edgecam.server.errors import InvalidArgument, ServerError
from edgecam.server.grpc import converters
from edgecam.server.grpc.status import error_message, grpc_code, maps_errors
from edgecam.server.grpc.wire import encode_stream_response, parse_infer_request
from edgecam.server.pipeline import Prediction
from edgecam.server.service import EdgeService

log = logging.getLogger(__name__)

T = TypeVar("T")
Context = grpc.aio.ServicerContext

# Methods whose responses the handler serializes itself: predictions once for every stream,
# inference outputs straight from their arrays (wire.py).
RAW_RESPONSES = frozenset({"StreamPredictions", "ModelInfer", "ModelStreamInfer"})
# Methods whose handler reads its request messages itself, as bytes, once the memory budget has
# room for them: served as client-streaming calls (a unary call is the same on the wire).
RAW_REQUESTS = frozenset({"ModelInfer", "ModelStreamInfer"})


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """KServe v2 / Open Inference Protocol."""

    def __init__(
        self,
        service: EdgeService,
        executor: Executor,
        budget: MemoryBudget,
        max_message_bytes: int,
        memory_wait_s: float = 0.1,
    ) -> None:
        self._service = service
        self._executor = executor
        self._budget = budget
        self._receive_cost = receive_cost(max_message_bytes)
        self._memory_wait_s = memory_wait_s

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
    async def ModelInfer(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        reservation = await self._budget.reserve_within(
            self._receive_cost, "ModelInfer request", self._memory_wait_s
        )
        # Held until the call is over, not until this returns: gRPC still holds the request's bytes
        # and buffers until then, and releasing earlier let the next 64 MiB request in on top of
        # them (RSS peak 2× one request's).
        release: Any = lambda _context: reservation.release()  # noqa: E731 (grpc's DoneCallback type)
        context.add_done_callback(release)
        raw = await context.read()
        if not isinstance(raw, bytes):  # grpc.aio.EOF: the client half-closed without a message
            raise InvalidArgument("ModelInfer needs one request message; the client sent none")
        # At once, to what a request of this size may cost in all (bytes, message, decoded inputs): a
        # small request frees the largest-size room for the next call's read, a large one keeps it.
        reservation.resize(receive_cost(len(raw)))
        return await self._run(self._infer, raw, reservation)

    def _infer(self, raw: bytes, reservation: Reservation) -> bytes:
        """On the executor: parse, hold exactly what this request costs, decode, run, encode."""
        request = parse_infer_request(raw)  # raw tensors stay views into `raw`
        # Typed contents can decode to more than their wire size (varints into 4-8 byte values).
        reservation.resize(wire_cost(len(raw)) + decoded_cost(request.message, request.raw_contents))
        decoded = converters.infer_request(request.message, request.raw_contents)
        del request  # the parsed message (typed contents can be large): the decoded arrays are copies
        return converters.infer_response(self._service.infer(decoded))

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes], context: Context) -> None:
        # Errors travel in the response (Triton's convention) so one bad request keeps the stream;
        # a full memory budget ends it (RESOURCE_EXHAUSTED): the next message was not read.
        while True:
            try:
                reservation = await self._budget.reserve_within(
                    self._receive_cost, "ModelStreamInfer request", self._memory_wait_s
                )
            except ServerError as exc:
                await context.abort(grpc_code(exc), error_message(exc))
            with reservation:
                raw = await context.read()
                if not isinstance(raw, bytes):  # grpc.aio.EOF: the client ended the stream
                    return
                reservation.resize(receive_cost(len(raw)))
                try:
                    response = await self._run(self._infer, raw, reservation)
                    answer = encode_stream_response(response)
                except Exception as exc:  # any error, ours or not, ends this request only, never the stream
                    if not isinstance(exc, ServerError):
                        log.exception("unexpected error in ModelStreamInfer")
                    answer = oip.ModelStreamInferResponse(
                        error_message=error_message(exc),
                        infer_response=oip.ModelInferResponse(id=_request_id(raw)),
                    ).SerializeToString()
            await context.write(answer)

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
        await self._run(self._service.repository.load, request.model_name, converters.load_version(request))
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
        # Per (camera, top_k): the last prediction sent and its bytes. Only the loop touches it.
        self._encoded_last: dict[tuple[str, int], tuple[Prediction, bytes]] = {}

    @maps_errors
    async def ListCameras(self, request: v1.ListCamerasRequest, context: Context) -> v1.ListCamerasResponse:
        return v1.ListCamerasResponse(
            cameras=[converters.camera_status(c.status()) for c in self._service.cameras()]
        )

    @maps_errors
    async def StreamPredictions(self, request: v1.StreamPredictionsRequest, context: Context) -> None:
        # context.write rather than yield: a client that went away fails the write, which ends the
        # stream here quietly instead of as an error logged by grpc for every disconnect.
        async for prediction in self._service.stream_predictions(request.camera):
            try:
                await context.write(self._encoded(prediction, request.top_k))
            except Exception:
                if context.done():
                    return
                raise

    def _encoded(self, prediction: Prediction, top_k: int) -> bytes:
        """The serialized message of `prediction`, made once for every stream that sends it: with
        hundreds of streams per camera, converting per stream kept the loop busy for milliseconds
        per frame (StreamPredictions is registered to send bytes as they are)."""
        key = (prediction.camera, top_k)
        cached = self._encoded_last.get(key)
        if cached is None or cached[0] is not prediction:
            cached = (prediction, converters.prediction(prediction, top_k).SerializeToString())
            self._encoded_last[key] = cached
        return cached[1]

    @maps_errors
    async def GetModelInfo(self, request: v1.GetModelInfoRequest, context: Context) -> v1.ModelInfo:
        return converters.model_info(self._service.model(request.name, request.version))


def _request_id(raw: bytes) -> str:
    try:
        return parse_infer_request(raw).message.id
    except InvalidArgument:
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
        raw = method.name in RAW_REQUESTS
        make = kinds[(method.client_streaming or raw, method.server_streaming)]
        built[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=None if raw else request_type.FromString,
            response_serializer=None if method.name in RAW_RESPONSES else response_type.SerializeToString,
        )
    return built
