"""Settings: YAML file, then EDGECAM_* environment, then flags, merged deeply; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgecam.server.settings import ServerSettings
from edgecam.server.sources.opencv import OpenCVSourceConfig
from edgecam.server.sources.synthetic import SyntheticSourceConfig


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "edgecam.yaml"
    config.write_text(
        "grpc_port: 9001\nmetrics_port: 9002\nmodels:\n  - path: /opt/models/a\n"
        "cameras:\n  - name: door\n    source: rtsp://cam/stream\n"
    )
    settings = ServerSettings.load(config)
    assert (settings.grpc_port, settings.metrics_port) == (9001, 9002)
    assert settings.cameras[0].name == "door" and settings.models[0].path == Path("/opt/models/a")
    monkeypatch.setenv("EDGECAM_GRPC_PORT", "7001")
    assert ServerSettings.load(config).grpc_port == 7001
    assert ServerSettings.load(config, grpc_port=6001, metrics_port=None).grpc_port == 6001
    assert ServerSettings.load(config, grpc_port=6001).metrics_port == 9002


def test_safe_defaults() -> None:
    settings = ServerSettings.load()
    assert settings.grpc_host == "127.0.0.1" and settings.metrics_host == "127.0.0.1"
    assert settings.max_message_bytes > 1920 * 1080 * 3 * 4


def test_unknown_setting_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("grpc_prot: 1\n")
    with pytest.raises(ValueError, match=r"grpc_prot.*valid"):
        ServerSettings.load(config)


def test_bad_value_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("cameras:\n  - name: 'bad name!'\n    source: synthetic\n")
    with pytest.raises(ValidationError, match=r"cameras\.0\.name"):
        ServerSettings.load(config)


def test_readme_example_config_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "config.yaml"
    config.write_text(block)
    settings = ServerSettings.load(config)
    assert settings.tls is not None and settings.tls.client_ca_file is not None
    assert settings.cameras[0].model == "fashion_cnn"
    assert settings.repository_poll_seconds == 5


def test_nested_keys_merge_deeply_across_file_environment_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydantic-settings' sources: a nested key from the environment replaces only itself, not the
    whole `tls` mapping the file gave (the hand-made merge replaced it and lost cert_file)."""
    config = tmp_path / "edgecam.yaml"
    config.write_text("tls:\n  cert_file: /etc/edgecam/cert.pem\n  key_file: /etc/edgecam/key.pem\n")
    monkeypatch.setenv("EDGECAM_TLS__CLIENT_CA_FILE", "/etc/edgecam/ca.pem")
    settings = ServerSettings.load(config, grpc_host="0.0.0.0")
    assert settings.tls is not None
    assert (settings.tls.cert_file, settings.tls.key_file, settings.tls.client_ca_file) == (
        Path("/etc/edgecam/cert.pem"),
        Path("/etc/edgecam/key.pem"),
        Path("/etc/edgecam/ca.pem"),
    )
    assert settings.grpc_host == "0.0.0.0"
    monkeypatch.setenv("EDGECAM_TLS__KEY_FILE", "/run/key.pem")  # the environment wins over the file
    tls = ServerSettings.load(config).tls
    assert tls is not None and tls.key_file == Path("/run/key.pem") and tls.cert_file.name == "cert.pem"


def test_a_camera_source_may_be_a_mapping_of_typed_options(tmp_path: Path) -> None:
    config = tmp_path / "edgecam.yaml"
    config.write_text(
        "cameras:\n"
        "  - name: typed\n    source: {kind: synthetic, fps: 5, seed: 2}\n"
        "  - name: door\n    source: {kind: opencv, uri: 'rtsp://cam/1', loop: false}\n"
        "  - name: short\n    source: synthetic:fps=7\n"
    )
    typed, door, short = ServerSettings.load(config).cameras
    assert isinstance(typed.source, SyntheticSourceConfig) and (typed.source.fps, typed.source.seed) == (5, 2)
    assert typed.source_config() is typed.source
    assert isinstance(door.source, OpenCVSourceConfig) and door.source.loop is False
    assert short.source == "synthetic:fps=7" and short.source_config() == SyntheticSourceConfig(fps=7)
    # Dumped with its kind's fields (the JSON a child process or a status page would get).
    assert ServerSettings.load(config).model_dump()["cameras"][0]["source"]["seed"] == 2


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{kind: synthetic, colour: red}", r"(?s)cameras\.0\.source.*unknown option.*colour.*valid"),
        ("{kind: synthetic, fps: fast}", r"(?s)cameras\.0\.source.*fps"),
        ("{kind: webcam}", r"(?s)cameras\.0\.source.*kind.*must be one of.*opencv.*synthetic.*webcam"),
    ],
)
def test_a_bad_source_mapping_is_named(tmp_path: Path, source: str, message: str) -> None:
    config = tmp_path / "edgecam.yaml"
    config.write_text(f"cameras:\n  - name: cam\n    source: {source}\n")
    with pytest.raises(ValidationError, match=message):
        ServerSettings.load(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", r"must be a mapping of settings, got list"),
        ("grpc_port: [\n", r"cannot read config file"),
    ],
)
def test_a_file_that_is_no_settings_mapping_is_named(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        ServerSettings.load(config)
    with pytest.raises(ValueError, match=r"cannot read config file .*missing\.yaml: no such file"):
        ServerSettings.load(tmp_path / "missing.yaml")


def test_environment_cameras_with_typed_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECAM_CAMERAS", '[{"name": "env", "source": {"kind": "synthetic", "size": 64}}]')
    (camera,) = ServerSettings.load().cameras
    assert camera.source_config() == SyntheticSourceConfig(size=64)
