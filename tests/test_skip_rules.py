"""The CI rule of tests/conftest.py: a skip fails the run unless hardware explains it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

Runner = Callable[..., pytest.RunResult]
RULES = (Path(__file__).parent / "conftest.py").read_text()


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Runner:
    """Runs an inner pytest session, in a subprocess, with these rules as its conftest."""
    pytester.makeconftest(RULES.replace('pytest_plugins = ("pytester",)', ""))

    def run_inner(body: str, strict: bool) -> pytest.RunResult:
        pytester.makepyfile(test_inner=body)
        monkeypatch.delenv("CI", raising=False)
        monkeypatch.setenv("EDGECAM_STRICT_SKIPS", "1" if strict else "0")
        return pytester.runpytest_subprocess("-p", "no:cacheprovider")

    return run_inner


MISSING_TOOL = "import pytest\ndef test_a():\n    pytest.skip('needs the frobnicate command')\n"
MISSING_MODULE = "import pytest\npytest.importorskip('no_such_module_here')\ndef test_a():\n    pass\n"
HARDWARE = "import pytest\ndef test_a():\n    pytest.skip('running AVX-VNNI code needs such a CPU')\n"


@pytest.mark.parametrize("body", [MISSING_TOOL, MISSING_MODULE], ids=["in-test", "at-collection"])
def test_a_skip_for_missing_software_fails_a_strict_run(run: Runner, body: str) -> None:
    result = run(body, strict=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*1 unexpected skips*"])


def test_the_same_skip_passes_outside_ci(run: Runner) -> None:
    assert run(MISSING_TOOL, strict=False).ret == pytest.ExitCode.OK


def test_a_hardware_skip_is_allowed_on_ci(run: Runner) -> None:
    assert run(HARDWARE, strict=True).ret == pytest.ExitCode.OK
