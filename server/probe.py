"""Test-load a model version in a child process before the server loads it.

A library whose hashes match can still be broken (bit flips before it was hashed, a build for CPU
features this host lacks): loaded into the serving process it kills it with SIGSEGV or SIGILL. So a
fresh `python -m edgecam.server.probe PATH` loads it first with the server's own loader (which
verifies the artifact and runs it once on zeros of the declared input shapes); only a version that
loaded and ran there is loaded into the server. The child's death (by signal, timeout or error) is a
refusal with its reason, and the server never notices.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

from edgecam.compiler.artifact import MANIFEST_NAME
from edgecam.server.errors import ModelLoadError

DEFAULT_TIMEOUT_S = 60.0
# The end of the child's last stderr line kept in a refusal message (its error, or the runtime's last words).
_TAIL_CHARS = 300


class ProbeError(ModelLoadError):
    """The child refused or died; `check` names how (signal_SIGSEGV, timeout, load) for the metric."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


def fingerprint(path: Path) -> str:
    """sha256 of what the probe vouches for: the manifest (which hashes every file) or the .onnx file."""
    target = path / MANIFEST_NAME if path.is_dir() else path
    return hashlib.sha256(target.read_bytes()).hexdigest()


def probe(path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Load and run `path` in a child; return the fingerprint it ran, or raise ProbeError."""
    # -P: `-m` would put the working directory first on sys.path, and an `edgecam/` folder there (a
    # source checkout) would shadow the installed package in the child.
    command = [sys.executable, "-P", "-m", "edgecam.server.probe", str(path)]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:  # run() has killed the child
        raise ProbeError(
            "timeout", f"test load of {path} did not finish within {timeout_s:g} s (child killed)"
        ) from None
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:  # a real-time signal has no name
            name = f"signal {-result.returncode}"
        raise ProbeError(
            f"signal_{name}".replace(" ", "_"),
            f"test load of {path} killed the child process with {name} (last output: {_last_line(result)})",
        )
    try:
        report = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        report = {}
    if result.returncode != 0:
        # The child's own check name (sha256, cpu_features, ...) when it got far enough to say it.
        check = str(report.get("check", "load")) if isinstance(report, dict) else "load"
        raise ProbeError(check, f"test load of {path} failed: {_last_line(result)}")
    if not isinstance(report, dict) or "fingerprint" not in report:
        raise ProbeError("load", f"test load of {path} printed no report: {result.stdout[-200:]!r}")
    return str(report["fingerprint"])


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return lines[-1][-_TAIL_CHARS:] if lines else "none"


def main(argv: list[str]) -> int:
    """The child: load as the server would, report the fingerprint it loaded, exit 0; else one line, 1."""
    if len(argv) != 1:
        print("usage: python -m edgecam.server.probe PATH", file=sys.stderr)
        return 2
    import resource

    from edgecam.server.runtime import load_model

    # No core dump from a crash: a camera's flash is small, and crashing here is the expected failure.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    path = Path(argv[0])
    try:
        before = fingerprint(path)
        load_model(path)  # verifies, loads, and runs once on zeros of the declared shapes
    except Exception as exc:  # every failure is the refusal's reason, on one line
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        print(json.dumps({"check": getattr(exc, "check", type(exc).__name__)}))
        return 1
    print(json.dumps({"fingerprint": before}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
