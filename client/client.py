"""`EdgecamClient`: talk to an edgecam server with numpy arrays and dataclasses, not protobuf."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from edgecam.datatypes import from_numpy, to_numpy
from edgecam.postprocessing import Postprocessing, Ranked, top_k
from edgecam.preprocessing import Preprocessing, preprocess
from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.proto.v1 import cameras_pb2 as v1
from edgecam.proto.v1 import cameras_pb2_grpc as v1_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class EdgecamClientError(Exception):
    """A call failed; `code` is the gRPC status name (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    platform: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    preprocessing: Preprocessing
    postprocessing: Postprocessing
    labels: list[str]


@dataclass(frozen=True)
class Camera:
    name: str
    source: str
    up: bool
    model: str
    frames_inferred: int
    frames_dropped: int
    fps: float
    last_frame_age_seconds: float | None


@dataclass(frozen=True)
class Prediction:
    camera: str
    frame_index: int
    capture_time: float
    inference_time: float
    top_k: list[Ranked]
    latency: dict[str, float] = field(default_factory=dict)
    model: str = ""
    label: int | None = None  # ground truth, when the camera knows it


@dataclass(frozen=True)
class ClientTls:
    """TLS to the server: its CA, and a client certificate when the server requires mTLS."""

    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


class EdgecamClient:
    """One channel to one server. Use as a context manager, or call close()."""

    def __init__(
        self, address: str, timeout: float = 10.0, token: str | None = None, tls: ClientTls | None = None
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, tls.credentials(), options=options)
        self._oip = oip_grpc.GRPCInferenceServiceStub(self._channel)
        self._cameras = v1_grpc.CameraServiceStub(self._channel)
        self._model_info: dict[str, ModelInfo] = {}

    def __enter__(self) -> EdgecamClient:
        return self

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects and the server says it is ready."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise EdgecamClientError(
                "UNAVAILABLE", f"no server answered at {self.address} in {timeout} s"
            ) from None
        if not self.ready():
            raise EdgecamClientError("UNAVAILABLE", f"server at {self.address} is live but not ready")

    def live(self) -> bool:
        return bool(self._call(self._oip.ServerLive, oip.ServerLiveRequest()).live)

    def ready(self) -> bool:
        return bool(self._call(self._oip.ServerReady, oip.ServerReadyRequest()).ready)

    def model_info(self, model: str, version: str = "") -> ModelInfo:
        key = f"{model}:{version}"
        if key not in self._model_info:
            meta = self._call(self._oip.ModelMetadata, oip.ModelMetadataRequest(name=model, version=version))
            info = self._call(self._cameras.GetModelInfo, v1.GetModelInfoRequest(name=model, version=version))
            self._model_info[key] = ModelInfo(
                name=meta.name,
                version=info.version,
                platform=meta.platform,
                inputs=[TensorInfo(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
                outputs=[TensorInfo(t.name, t.datatype, list(t.shape)) for t in meta.outputs],
                preprocessing=Preprocessing.model_validate(json.loads(info.preprocessing_json)),
                postprocessing=Postprocessing.model_validate(json.loads(info.postprocessing_json)),
                labels=list(info.labels),
            )
        return self._model_info[key]

    def infer(self, model: str, inputs: dict[str, np.ndarray], version: str = "") -> dict[str, np.ndarray]:
        """Run the model on raw tensors; returns every output by name."""
        request = oip.ModelInferRequest(model_name=model, model_version=version)
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            request.inputs.add(name=name, datatype=from_numpy(array.dtype), shape=list(array.shape))
            request.raw_input_contents.append(
                array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            )
        response = self._call(self._oip.ModelInfer, request)
        return {
            out.name: np.frombuffer(raw, dtype=to_numpy(out.datatype).newbyteorder("<")).reshape(
                list(out.shape)
            )
            for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        }

    def classify(self, model: str, image: np.ndarray, k: int | None = None) -> list[Ranked]:
        """Classify one OpenCV image (BGR or gray), preprocessed exactly as the server's cameras do."""
        info = self.model_info(model)
        tensor = preprocess(image, info.preprocessing)
        outputs = self.infer(model, {info.inputs[0].name: tensor})
        scores = outputs[info.postprocessing.output or info.outputs[0].name]
        return top_k(scores, info.labels, info.postprocessing, k)

    def cameras(self) -> list[Camera]:
        response = self._call(self._cameras.ListCameras, v1.ListCamerasRequest())
        return [
            Camera(
                name=c.name,
                source=c.source,
                up=c.up,
                model=c.model_name,
                frames_inferred=c.frames_inferred,
                frames_dropped=c.frames_dropped,
                fps=c.fps,
                last_frame_age_seconds=c.last_frame_age_seconds if c.last_frame_age_seconds >= 0 else None,
            )
            for c in response.cameras
        ]

    def stream(self, camera: str, top_k: int = 0) -> Iterator[Prediction]:
        """Live predictions of one camera; stops when the server ends the stream or on close()."""
        calls = self._cameras.StreamPredictions(
            v1.StreamPredictionsRequest(camera=camera, top_k=top_k), metadata=self._metadata
        )
        try:
            for p in calls:
                yield Prediction(
                    camera=p.camera,
                    frame_index=p.frame_index,
                    capture_time=p.capture_time,
                    inference_time=p.inference_time,
                    top_k=[Ranked(s.index, s.label, s.score) for s in p.top_k],
                    latency={s.stage: s.seconds for s in p.latency},
                    model=p.model_name,
                    label=p.label_index if p.has_label else None,
                )
        except grpc.RpcError as exc:
            raise _client_error(exc) from None
        finally:
            calls.cancel()

    def _call(self, method: Any, request: object) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _client_error(exc) from None


def _client_error(exc: grpc.RpcError) -> EdgecamClientError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return EdgecamClientError(code.name if code is not None else "UNKNOWN", details or "")
