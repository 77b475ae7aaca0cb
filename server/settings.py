"""Server settings: one typed model, one default per field; a YAML file, EDGECAM_* variables and
command-line flags over it, merged by pydantic-settings' own sources."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from edgecam.server.shadow import ShadowConfig
from edgecam.server.sources import SourceConfig, SourceError, source_config

# The YAML file of the settings being built (`ServerSettings.load`); None: no file.
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("edgecam_config_file", default=None)


class ModelConfig(BaseModel):
    path: Path  # an artifact directory or a plain .onnx file
    name: str | None = None  # default: the artifact's model name (or the .onnx file's stem)
    version: str = "1"


class CameraConfig(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # A string (synthetic[:opts], a file, rtsp://..., http://..., /dev/videoN, a device index: parsed
    # when the camera starts), or a mapping with `kind` and that source's typed options.
    source: str | SerializeAsAny[SourceConfig]
    model: str | None = None  # default: the server's only model
    # Cap on inferences per second; None: as fast as frames come.
    max_fps: float | None = Field(default=None, gt=0)
    # No frame for this long: the stream is stalled and is reopened. Above the camera's frame interval.
    max_frame_age_s: float = Field(default=5.0, gt=0)
    backoff_max_s: float = Field(default=10.0, gt=0)  # reconnect waits double up to this
    # Also run a sampled share of frames on the fp32 reference model (the artifact's reference.onnx).
    shadow: ShadowConfig | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _typed_source(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            try:
                return source_config(value)
            except SourceError as exc:  # pydantic adds where: cameras.N.source
                raise ValueError(str(exc)) from None
        return value

    def source_config(self) -> SourceConfig:
        """The source's config, a string parsed now (SourceError names what is wrong)."""
        return source_config(self.source)


class TlsConfig(BaseModel):
    cert_file: Path  # PEM certificate chain of this server
    key_file: Path  # its PEM private key
    client_ca_file: Path | None = None  # set: clients must present a certificate signed by this CA (mTLS)


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
    # <repository>/<model>/<version>/ of artifacts; the newest version of each model is served.
    model_repository: Path | None = None
    # Watch the repository and hot-reload new versions every this many seconds; 0: only on request.
    repository_poll_seconds: float = Field(default=0.0, ge=0)
    cameras: list[CameraConfig] = Field(default_factory=list)
    tls: TlsConfig | None = None
    # Bearer tokens accepted on every RPC but health checks; a file holds one per line (rotation).
    auth_token: SecretStr | None = None
    auth_tokens_file: Path | None = None
    keepalive_seconds: float = Field(default=30.0, gt=0)  # pings keep idle prediction streams alive

    # -- trust: what may be loaded and who may ask (server/repository.py, server/probe.py) ----------
    # The fleet's Ed25519 public keys (PEM files, or directories of *.pem/*.pub): set, only artifacts
    # signed by one of them are loaded. Several at once: key rotation. Empty: unsigned artifacts load.
    trusted_keys: list[Path] = Field(default_factory=list)
    # RepositoryModelLoad/Unload over gRPC; False: they answer PERMISSION_DENIED (deploys use the watcher).
    repository_rpcs: bool = True
    # Every new version is test-loaded and run in a child process first; it must finish within this.
    probe_timeout_seconds: float = Field(default=60.0, gt=0)

    # -- serving limits (issue 18: streams cannot starve unary calls, memory is bounded) ---------
    # Open StreamPredictions calls, all cameras together; one more gets RESOURCE_EXHAUSTED.
    max_streams: int = Field(default=256, ge=1)
    # Memory that requests in flight may hold: message, decoded inputs and the runtime's copy
    # (server/budget.py). A request that does not fit in what is left gets RESOURCE_EXHAUSTED.
    request_memory_budget_bytes: int = Field(default=512 * 1024 * 1024, ge=0)
    # A call that finds the budget full waits this long for requests in flight to finish, then is
    # refused: concurrent clients queue briefly instead of failing.
    request_memory_wait_seconds: float = Field(default=0.1, ge=0)
    # SIGTERM: how long to wait for the cameras' threads (all at once) before leaving stuck ones.
    camera_stop_seconds: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _budget_holds_one_request(self) -> ServerSettings:
        # Every call reserves what a request of max_message_bytes costs before reading it
        # (server/budget.py); a smaller budget would refuse every request, forever.
        from edgecam.server.budget import receive_cost

        needed = receive_cost(self.max_message_bytes)
        if self.request_memory_budget_bytes < needed:
            raise ValueError(
                f"request_memory_budget_bytes {self.request_memory_budget_bytes} cannot hold one request "
                f"of max_message_bytes {self.max_message_bytes} (needs {needed}); "
                "raise the budget or lower max_message_bytes"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The sources, highest priority first: flags (the init arguments), EDGECAM_* variables, the
        YAML file (`load`). pydantic-settings merges them deeply: a nested key replaces only itself."""
        config_file = _CONFIG_FILE.get()
        if config_file is None:
            return init_settings, env_settings
        return init_settings, env_settings, _YamlFile(settings_cls, yaml_file=config_file)

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> ServerSettings:
        """Settings from a YAML file, then EDGECAM_* variables over it, then command-line flags over both
        (a flag left unset, None or [], is not one)."""
        if config_file is not None and not Path(config_file).is_file():
            raise ValueError(f"cannot read config file {config_file}: no such file")
        token = _CONFIG_FILE.set(None if config_file is None else Path(config_file))
        try:
            return cls(**{k: v for k, v in flags.items() if v not in (None, [])})
        except ValidationError as exc:
            unknown = sorted(str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden")
            if unknown and len(unknown) == len(exc.errors()):
                valid = sorted(cls.model_fields)
                raise ValueError(
                    f"config file {config_file}: unknown settings {unknown}; valid: {valid}"
                ) from None
            raise
        finally:
            _CONFIG_FILE.reset(token)


class _YamlFile(YamlConfigSettingsSource):
    """pydantic-settings' YAML source; an unreadable file or one that is no mapping is named."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read config file {file_path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(
                f"config file {file_path} must be a mapping of settings, got {type(data).__name__}"
            )
        return data
