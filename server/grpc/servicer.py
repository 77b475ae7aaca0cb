"""Thin gRPC servicers: proto in, EdgeService call, proto out. Errors map in status.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc
from edgecam.server.errors import ServerError
from edgecam.server.grpc import converters
from edgecam.server.grpc.status import error_message, maps_errors
from edgecam.server.service import EdgeService

log = logging.getLogger(__name__)


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """KServe v2 / Open Inference Protocol."""

    def __init__(self, service: EdgeService) -> None:
        self._service = service

    @maps_errors
    def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=self._service.live())

    @maps_errors
    def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.ServicerContext
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._service.ready())

    @maps_errors
    def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.ServicerContext
    ) -> oip.ModelReadyResponse:
        return oip.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version))

    @maps_errors
    def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ServerMetadataResponse:
        name, version, extensions = self._service.server_metadata()
        return oip.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @maps_errors
    def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ModelMetadataResponse:
        return converters.model_metadata(self._service.model(request.name, request.version))

    @maps_errors
    def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        return converters.infer_response(self._service.infer(converters.infer_request(request)))

    def ModelStreamInfer(
        self, request_iterator: Iterator[oip.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[oip.ModelStreamInferResponse]:
        # Errors travel in the response (Triton's convention) so one bad request keeps the stream.
        for request in request_iterator:
            try:
                response = self._service.infer(converters.infer_request(request))
                yield oip.ModelStreamInferResponse(infer_response=converters.infer_response(response))
            except Exception as exc:  # any error, ours or not, ends this request only, never the stream
                if not isinstance(exc, ServerError):
                    log.exception("unexpected error in ModelStreamInfer")
                yield oip.ModelStreamInferResponse(
                    error_message=error_message(exc), infer_response=oip.ModelInferResponse(id=request.id)
                )

    @maps_errors
    def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        stats = self._service.model_statistics(request.name, request.version)
        memory = {(m.name, m.version): m.runtime.memory_bytes() for m in self._service.models()}
        return converters.model_statistics(stats, memory)

    @maps_errors
    def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> oip.RepositoryIndexResponse:
        return converters.repository_index(self._service.repository.index(ready_only=request.ready))

    @maps_errors
    def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: grpc.ServicerContext
    ) -> oip.RepositoryModelLoadResponse:
        self._service.repository.load(request.model_name, converters.load_version(request))
        return oip.RepositoryModelLoadResponse()

    @maps_errors
    def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: grpc.ServicerContext
    ) -> oip.RepositoryModelUnloadResponse:
        self._service.unload_model(request.model_name)
        return oip.RepositoryModelUnloadResponse()


class CameraServicer(v1_grpc.CameraServiceServicer):
    """edgecam.v1: cameras and their live predictions."""

    def __init__(self, service: EdgeService) -> None:
        self._service = service

    @maps_errors
    def ListCameras(
        self, request: v1.ListCamerasRequest, context: grpc.ServicerContext
    ) -> v1.ListCamerasResponse:
        return v1.ListCamerasResponse(
            cameras=[converters.camera_status(c.status()) for c in self._service.cameras()]
        )

    @maps_errors
    def StreamPredictions(
        self, request: v1.StreamPredictionsRequest, context: grpc.ServicerContext
    ) -> Iterator[v1.Prediction]:
        for prediction in self._service.stream_predictions(request.camera, context.is_active):
            yield converters.prediction(prediction, request.top_k)

    @maps_errors
    def GetModelInfo(self, request: v1.GetModelInfoRequest, context: grpc.ServicerContext) -> v1.ModelInfo:
        return converters.model_info(self._service.model(request.name, request.version))
