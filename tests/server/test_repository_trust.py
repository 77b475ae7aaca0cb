"""Repository RPCs take names, not paths; can be switched off; and folders still being copied recover."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.server.app import EdgecamServer
from edgecam.server.settings import ServerSettings

TOKEN = "repository-token"


@pytest.fixture
def start(repo: Path, serve: Callable[..., EdgecamServer]) -> Callable[..., EdgecamServer]:
    return lambda **settings: serve(model_repository=repo, **settings)


def _call_load(server: EdgecamServer, name: str, version: str = "", token: str = "") -> grpc.RpcError | None:
    request = oip.RepositoryModelLoadRequest(model_name=name)
    if version:
        request.parameters["version"].string_param = version
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        try:
            oip_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
                request, timeout=60, metadata=metadata
            )
        except grpc.RpcError as exc:
            return exc
    return None


def test_model_names_are_names_not_paths(
    start: Callable[..., EdgecamServer], repo: Path, tmp_path: Path, onnx_builder: Callable[..., Path]
) -> None:
    # Another directory with a loadable model and numbered folders: nothing of it may be loaded or listed.
    outside = tmp_path / "elsewhere"
    (outside / "7").mkdir(parents=True)
    onnx_builder(outside / "7" / "model.onnx")
    (outside / "secret-folder-name").mkdir()
    server = start()
    for name in ("../elsewhere", str(outside), "tiny/../../elsewhere", ".hidden", "..", "a\\b", ""):
        error = _call_load(server, name)
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "not a plain name" in error.details() and "secret-folder-name" not in error.details()
    for version in ("../1", "1/..", "²", "-1", "1.0"):
        error = _call_load(server, "tiny", version)
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, version
        assert "decimal number" in error.details()
    assert [m.name for m in server.repository.serving()] == ["tiny"]


def test_links_out_of_the_repository_are_refused(
    start: Callable[..., EdgecamServer], repo: Path, tmp_path: Path, onnx_builder: Callable[..., Path]
) -> None:
    outside = tmp_path / "elsewhere"
    (outside / "1").mkdir(parents=True)
    onnx_builder(outside / "1" / "model.onnx")
    (repo / "linked").symlink_to(outside)  # a model folder that is a link out
    (repo / "tiny" / "2").mkdir()
    (repo / "tiny" / "2" / "model.onnx").symlink_to(outside / "1" / "model.onnx")  # a file that is one
    server = start()
    assert {m.name: m.version for m in server.repository.serving()} == {"tiny": "1"}
    for name, version in (("linked", "1"), ("tiny", "2")):
        error = _call_load(server, name, version)
        assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "points outside the model repository" in error.details()
    # A link inside the repository is fine.
    (repo / "tiny" / "3").mkdir()
    (repo / "tiny" / "3" / "model.onnx").symlink_to(repo / "tiny" / "1" / "model.onnx")
    assert _call_load(server, "tiny", "3") is None


def test_repository_rpcs_can_be_switched_off(start: Callable[..., EdgecamServer]) -> None:
    server = start(repository_rpcs=False)
    error = _call_load(server, "tiny")
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "repository_rpcs" in error.details() and "\n" not in error.details()
    with (
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        oip_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
            oip.RepositoryModelUnloadRequest(model_name="tiny"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert server.repository.get("tiny").version == "1"


def test_repository_rpcs_need_a_token_when_auth_is_on(start: Callable[..., EdgecamServer]) -> None:
    server = start(auth_token=TOKEN)
    error = _call_load(server, "tiny")
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _call_load(server, "tiny", token=TOKEN) is None


def test_a_version_folder_copied_in_place_is_checked_again_until_complete(
    start: Callable[..., EdgecamServer], repo: Path, onnx_builder: Callable[..., Path]
) -> None:
    """A plain `cp -r`: the folder appears empty, then half a file, then all of it."""
    server = start()
    source = onnx_builder(repo.parent / "v2.onnx", probs_output=True)
    folder = repo / "tiny" / "2"
    folder.mkdir()
    server.repository.poll()
    index = {e.version: e for e in server.repository.index()}
    assert index["2"].state == "FAILED" and "still being copied" in index["2"].reason
    data = source.read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    server.repository.poll()
    assert server.repository.get("tiny").version == "1"  # half a model is refused...
    server.repository.poll()  # ...and, unchanged, not tried again (no refusal per poll)
    (folder / "model.onnx").write_bytes(data)
    server.repository.poll()
    assert server.repository.get("tiny").version == "2"  # complete: served
    assert [e.state for e in server.repository.index()] == ["UNAVAILABLE", "READY"]
    failures = server.registry.get_sample_value(
        "edgecam_model_load_failures_total", {"model": "tiny", "reason": "incomplete"}
    )
    assert failures == 1


def test_the_staging_rename_publishes_a_version_at_once(
    start: Callable[..., EdgecamServer], repo: Path
) -> None:
    server = start()
    staging = repo / "tiny" / ".2.tmp"  # hidden and not a number: never looked at
    shutil.copytree(repo / "tiny" / "1", staging)
    server.repository.poll()
    assert [e.version for e in server.repository.index()] == ["1"]
    staging.rename(repo / "tiny" / "2")
    server.repository.poll()
    assert server.repository.get("tiny").version == "2"


def test_a_test_load_that_does_not_finish_in_time_is_refused(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """probe_timeout_seconds far below what starting a Python child takes: every test load times out."""
    with pytest.raises(Exception, match="no model in"):
        EdgecamServer(
            ServerSettings(grpc_port=0, metrics_port=0, model_repository=repo, probe_timeout_seconds=0.01)
        )
    refusals = [r.getMessage() for r in caplog.records if "refused tiny version 1" in r.getMessage()]
    assert refusals and "did not finish within 0.01 s (child killed)" in refusals[0]
