from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListCamerasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CameraStatus(_message.Message):
    __slots__ = ("name", "source", "up", "model_name", "model_version", "frames_inferred", "frames_dropped", "fps", "last_frame_age_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAMES_INFERRED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    up: bool
    model_name: str
    model_version: str
    frames_inferred: int
    frames_dropped: int
    fps: float
    last_frame_age_seconds: float
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., up: bool = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., frames_inferred: _Optional[int] = ..., frames_dropped: _Optional[int] = ..., fps: _Optional[float] = ..., last_frame_age_seconds: _Optional[float] = ...) -> None: ...

class ListCamerasResponse(_message.Message):
    __slots__ = ("cameras",)
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    cameras: _containers.RepeatedCompositeFieldContainer[CameraStatus]
    def __init__(self, cameras: _Optional[_Iterable[_Union[CameraStatus, _Mapping]]] = ...) -> None: ...

class StreamPredictionsRequest(_message.Message):
    __slots__ = ("camera", "top_k")
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    camera: str
    top_k: int
    def __init__(self, camera: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("index", "label", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    score: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class StageLatency(_message.Message):
    __slots__ = ("stage", "seconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    seconds: float
    def __init__(self, stage: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("camera", "frame_index", "capture_time", "inference_time", "top_k", "latency", "model_name", "model_version", "has_label", "label_index")
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HAS_LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_INDEX_FIELD_NUMBER: _ClassVar[int]
    camera: str
    frame_index: int
    capture_time: float
    inference_time: float
    top_k: _containers.RepeatedCompositeFieldContainer[LabelScore]
    latency: _containers.RepeatedCompositeFieldContainer[StageLatency]
    model_name: str
    model_version: str
    has_label: bool
    label_index: int
    def __init__(self, camera: _Optional[str] = ..., frame_index: _Optional[int] = ..., capture_time: _Optional[float] = ..., inference_time: _Optional[float] = ..., top_k: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., latency: _Optional[_Iterable[_Union[StageLatency, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., has_label: bool = ..., label_index: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "platform", "preprocessing_json", "postprocessing_json", "labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_JSON_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESSING_JSON_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    platform: str
    preprocessing_json: str
    postprocessing_json: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., platform: _Optional[str] = ..., preprocessing_json: _Optional[str] = ..., postprocessing_json: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...
