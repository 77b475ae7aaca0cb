"""Server settings: one typed model, one default per field, overridable as EDGECAM_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelConfig(BaseModel):
    path: Path  # an artifact directory or a plain .onnx file
    name: str | None = None  # default: the artifact's model name (or the .onnx file's stem)
    version: str = "1"


class CameraConfig(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    source: str  # synthetic[:opts], a file, rtsp://..., http://..., /dev/videoN or a device index
    model: str | None = None  # default: the server's only model


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGECAM_", env_nested_delimiter="__")

    # Loopback by default: exposing a camera's API to the network is an operator's decision.
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=8001, ge=0, le=65535)  # 0: any free port (tests)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=8002, ge=0, le=65535)
    workers: int = Field(default=16, ge=1)
    # A 1080p RGB frame in FP32 is ~24 MiB, far over gRPC's 4 MiB default.
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=4 * 1024 * 1024)
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    models: list[ModelConfig] = Field(default_factory=list)
    cameras: list[CameraConfig] = Field(default_factory=list)
