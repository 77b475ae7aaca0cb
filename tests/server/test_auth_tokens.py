"""Bearer tokens fail closed and follow their file: an empty file stops start-up, a revoked token stops."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.server.app import EdgecamServer
from edgecam.server.grpc.auth import RECHECK_S
from edgecam.server.settings import ModelConfig, ServerSettings


@pytest.fixture
def start(onnx_builder: Callable[..., Path], tmp_path: Path) -> Iterator[Callable[..., EdgecamServer]]:
    servers: list[EdgecamServer] = []
    model = onnx_builder(tmp_path / "tiny.onnx")

    def make(**settings: object) -> EdgecamServer:
        server = EdgecamServer(
            ServerSettings(grpc_port=0, metrics_port=0, models=[ModelConfig(path=model)], **settings)  # type: ignore[arg-type]
        )
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


def _code(server: EdgecamServer, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        try:
            oip_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                oip.ModelMetadataRequest(name="tiny"),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _until(server: EdgecamServer, token: str, code: grpc.StatusCode) -> float:
    """Seconds until `token` gets `code` (bounded: a few re-check periods)."""
    started = time.monotonic()
    while _code(server, token) != code:
        assert time.monotonic() - started < 5 * RECHECK_S + 2, f"{token} never got {code}"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("content", ["", "\n\n", "# tokens, one per line\n   \n#old-token\n"])
def test_a_token_file_without_tokens_stops_start_up(
    start: Callable[..., EdgecamServer], tmp_path: Path, content: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    with pytest.raises(ValueError, match=r"holds no token") as caught:
        start(auth_tokens_file=tokens)
    assert str(tokens) in str(caught.value) and "\n" not in str(caught.value)


def test_the_serve_command_says_so_in_one_line(tmp_path: Path, onnx_builder: Callable[..., Path]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# nothing yet\n")
    model = onnx_builder(tmp_path / "tiny.onnx")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecam",
            "serve",
            "--model",
            str(model),
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ],
        env={**os.environ, "EDGECAM_AUTH_TOKENS_FILE": str(tokens)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds no token" in errors[0] and "Traceback" not in result.stderr


def test_token_file_changes_apply_without_restart(
    start: Callable[..., EdgecamServer], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\nkept-token\n")
    server = start(auth_tokens_file=tokens)
    assert _code(server, "old-token") == grpc.StatusCode.OK
    assert _code(server, "new-token") == grpc.StatusCode.UNAUTHENTICATED
    # Rotation written the safe way: a new file renamed over the old one.
    staged = tmp_path / "tokens.new"
    staged.write_text("new-token\nkept-token\n")
    staged.replace(tokens)
    assert _until(server, "old-token", grpc.StatusCode.UNAUTHENTICATED) < 3 * RECHECK_S + 1
    assert _code(server, "new-token") == grpc.StatusCode.OK
    assert _code(server, "kept-token") == grpc.StatusCode.OK
    # A broken re-read (emptied mid-write, or unreadable) keeps the last good set instead of locking out.
    tokens.write_text("")
    time.sleep(2 * RECHECK_S)
    assert _code(server, "new-token") == grpc.StatusCode.OK
    tokens.unlink()
    time.sleep(2 * RECHECK_S)
    assert _code(server, "kept-token") == grpc.StatusCode.OK
    tokens.write_text("latest-token\n")
    _until(server, "latest-token", grpc.StatusCode.OK)
    assert _code(server, "new-token") == grpc.StatusCode.UNAUTHENTICATED
