"""Settings: YAML file, then EDGECAM_* environment, then flags; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgecam.server.settings import ServerSettings


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
