"""Each extra alone, installed with pip into a fresh venv, gives an `edgecam` command that works.

`pip install 'edgecam[client]'` once gave a command that died importing yaml; these install the
repository as a user would (a real wheel build, dependencies from the package registry) and run
the commands that extra is for. Slow: every install downloads or links its dependencies.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgecam.models import fashion_cnn
from edgecam.server.cli import READY_LINE
from edgecam.server.launcher import RunningServer, launch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]


def _venv_with(extra: str, where: Path) -> Path:
    """A fresh venv with `edgecam[extra]` installed from this checkout; returns its bin/ folder."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    bin_dir = where / "bin"
    installed = subprocess.run(
        [str(bin_dir / "pip"), "install", "-q", f"{REPO}[{extra}]"], capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return bin_dir


def _edgecam(bin_dir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "edgecam"), *args], capture_output=True, text=True, timeout=timeout, cwd=bin_dir
    )


@pytest.fixture(scope="module")
def venv_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`venv_of(extra)`: the bin/ folder of a venv with that extra, installed once per module."""
    made: dict[str, Path] = {}

    def get(extra: str) -> Path:
        if extra not in made:
            made[extra] = _venv_with(extra, tmp_path_factory.mktemp(f"venv-{extra}"))
        return made[extra]

    return get


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = launch(["--model", str(fashion_cnn.onnx_path()), "--camera", "front=synthetic:fps=10"])
    yield running
    running.stop()


@pytest.mark.parametrize("extra", ["client", "compiler", "server"])
def test_every_command_shows_its_help(extra: str, venv_of: Callable[[str], Path]) -> None:
    bin_dir = venv_of(extra)
    top = _edgecam(bin_dir, "--help")
    assert top.returncode == 0, top.stderr
    for command in ("compile", "compress", "tune", "report", "serve", "watch", "infer", "status", "demo"):
        assert command in top.stdout
        shown = _edgecam(bin_dir, command, "--help")
        assert shown.returncode == 0, f"edgecam[{extra}] {command} --help: {shown.stderr[-2000:]}"
        assert "Usage" in shown.stdout


def test_the_client_extra_talks_to_a_server(server: RunningServer, venv_of: Callable[[str], Path]) -> None:
    bin_dir = venv_of("client")
    status = _edgecam(bin_dir, "status", server.grpc_address)
    assert status.returncode == 0, status.stderr
    assert f"{server.grpc_address}: ready" in status.stdout and "front" in status.stdout
    watched = _edgecam(bin_dir, "watch", server.grpc_address, "front", "--count", "3")
    assert watched.returncode == 0, watched.stderr
    assert len([line for line in watched.stdout.splitlines() if line.startswith("front #")]) == 3


def test_the_compiler_extra_compiles(venv_of: Callable[[str], Path], tmp_path: Path) -> None:
    bin_dir = venv_of("compiler")
    out = tmp_path / "artifact"
    built = _edgecam(
        bin_dir, "compile", str(fashion_cnn.onnx_path()), "--target", "x86_64", "--out", str(out)
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert (out / "manifest.json").is_file()


def test_the_server_extra_serves(venv_of: Callable[[str], Path]) -> None:
    bin_dir = venv_of("server")
    serving = subprocess.Popen(
        [
            str(bin_dir / "edgecam"),
            "serve",
            "--model",
            str(fashion_cnn.onnx_path()),
            "--camera",
            "c=synthetic",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert serving.stdout is not None
    try:
        lines = []
        for line in serving.stdout:
            lines.append(line)
            if READY_LINE in line:
                break
        assert READY_LINE in lines[-1], "".join(lines)
    finally:
        serving.send_signal(signal.SIGTERM)
        assert serving.wait(timeout=60) == 0
