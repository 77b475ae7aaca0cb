"""Broken libraries whose hashes match are test-loaded in a child and refused; the server never notices.

Real TVM builds of the tiny model (this host, and x86-64-v4), signed by a key made with `edgecam
keygen`, broken as in bench/reliability/reload.py, served over loopback while a client calls
ModelInfer.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType

import grpc
import pytest

from edgecam.proto.inference import grpc_service_pb2 as oip
from edgecam.proto.inference import grpc_service_pb2_grpc as oip_grpc
from edgecam.server.app import EdgecamServer
from edgecam.server.errors import ModelLoadError
from edgecam.server.settings import ModelConfig, ServerSettings

BENCH = Path(__file__).resolve().parents[2] / "bench"
# readelf (binutils, installed by `make test`) is not a reason to skip: a missing tool fails loudly.
pytestmark = pytest.mark.skipif(
    __import__("platform").machine() != "x86_64", reason="the AVX-512 builds are x86_64 code"
)


@pytest.fixture(scope="module")
def reload() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        from reliability import reload as module
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture(scope="module")
def artifacts(reload: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return reload.build_signed_artifacts(tmp_path_factory.mktemp("signed"))


def _load(stub: oip_grpc.GRPCInferenceServiceStub, version: str) -> None:
    request = oip.RepositoryModelLoadRequest(model_name="tiny")
    request.parameters["version"].string_param = version
    stub.RepositoryModelLoad(request, timeout=120)


def test_broken_libraries_are_refused_while_a_client_keeps_calling(
    reload: ModuleType, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    runs_here = {kind: reload.host_runs(artifacts, kind) for kind in reload.ISA_BUILDS}
    results = reload.reload_kinds(artifacts, tmp_path, settle_s=0.2)

    assert results["total_failed_requests"] == 0, results["failure_examples"]
    for kind in ("text", "dynamic"):
        assert results[kind]["outcome"] == "refused", results[kind]
        assert (
            f"model 'tiny' version '{results[kind]['version']}' refused: test load of"
            in (results[kind]["reason"])
        )
        assert results[kind]["requests_answered"] > 0
    # Every byte of .text flipped: the library's first instruction is garbage, a signal for sure.
    assert "killed the child process with SIG" in results["text"]["reason"]
    # Built for AVX-512 (FP16) and relabelled: a host without it refuses (SIGILL); one with it runs it.
    for kind, runs in runs_here.items():
        assert results[kind]["outcome"] == ("served" if runs else "refused"), results[kind]
        if not runs:
            assert "killed the child process with SIGILL" in results[kind]["reason"]
    assert results["unsigned"]["outcome"] == "refused" and "not signed" in results["unsigned"]["reason"]
    assert results["good"]["outcome"] == "served" and results["good"]["serving_after"] == ["2"]
    signals = {k: v for k, v in results["load_failures_metric"].items() if k.startswith("signal_")}
    assert sum(signals.values()) >= 1 and results["load_failures_metric"]["signature"] == 1


def test_start_up_falls_back_past_a_version_that_crashes_its_test_load(
    reload: ModuleType, artifacts: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    (repo / "tiny").mkdir(parents=True)
    shutil.copytree(artifacts["host"], repo / "tiny" / "1")
    reload.make_variant(artifacts, "text", repo / "tiny" / "2")
    with reload.server_with_keys(repo, artifacts["public_key"]) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(reload.infer_request(), timeout=10).model_version == "1"
            index = {m.version: m for m in stub.RepositoryIndex(oip.RepositoryIndexRequest()).models}
            assert index["2"].state == "FAILED" and "killed the child process" in index["2"].reason
        server.repository.poll()  # unchanged since refused: not tried again
        assert server.repository.get("tiny").version == "1"
        failures = [
            s.value
            for metric in server.registry.collect()
            if metric.name == "edgecam_model_load_failures"
            for s in metric.samples
            if s.name.endswith("_total")
        ]
        assert sum(failures) == 1
        assert server.registry.get_sample_value("edgecam_model_fallbacks_total", {"model": "tiny"}) == 1
    assert any("newer versions ['2'] were refused" in r.getMessage() for r in caplog.records)


def test_a_command_line_model_is_test_loaded_too(
    reload: ModuleType, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    broken = reload.make_variant(artifacts, "text", tmp_path / "broken")
    with pytest.raises(ModelLoadError, match=r"killed the child process with SIG"):
        EdgecamServer(ServerSettings(grpc_port=0, metrics_port=0, models=[ModelConfig(path=broken)]))
