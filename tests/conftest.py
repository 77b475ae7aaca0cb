"""Suite-wide rules: on CI a skip is a failure unless the host's hardware explains it.

A test that skips because a tool or package is missing hides a broken install step: CI installs
everything the suite needs, so such a skip means CI did not test what the README says it tests.
Only the reasons in ALLOWED_SKIPS (hardware this machine may lack, or have) may skip there.
`EDGECAM_STRICT_SKIPS=1` (set by .ci/run; `CI=true` implies it) turns the rule on.
"""

from __future__ import annotations

import os
import re

import pytest

pytest_plugins = ("pytester",)  # tests/test_skip_rules.py runs inner sessions under these rules

# reason pattern → why a CI machine may skip it. Each is about the CPU or GPU CI happens to run on,
# never about software that an install step could provide.
ALLOWED_SKIPS: dict[str, str] = {
    r"this host (can run znver4 code|has every znver4 feature)": (
        "the refusal of a znver4 build is only observable on a CPU without some znver4 feature"
    ),
    r"needs (an )?AVX-512 VNNI|running AVX-512 VNNI code": "no AVX-512 VNNI on this CPU",
    r"AVX-VNNI code needs such a CPU": "no AVX-VNNI (VEX vpdpbusd) on this CPU: client Intel cores only",
    r"this host has a GPU": "the no-GPU path is only observable on a host without a GPU",
    r"needs an NVIDIA GPU|no (NVIDIA )?GPU": "no GPU on CI",
    r"this host runs aarch64 code( natively)?": "the emulation path is only observable on an x86 host",
}

_skips: list[tuple[str, str]] = []


def _strict() -> bool:
    return os.environ.get("EDGECAM_STRICT_SKIPS") == "1" or os.environ.get("CI") == "true"


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason pytest prints for a skip (`longrepr` is (file, line, "Skipped: reason"))."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def is_allowed(reason: str) -> bool:
    return any(re.search(pattern, reason) for pattern in ALLOWED_SKIPS)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append((report.nodeid, skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # A module-level importorskip skips the whole file at collection, not in a test.
    if report.skipped:
        _skips.append((report.nodeid, skip_reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    unexpected = [(node, reason) for node, reason in _skips if not is_allowed(reason)]
    if not (_strict() and unexpected):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.section("unexpected skips (not in tests/conftest.py ALLOWED_SKIPS)", red=True)
        for node, reason in unexpected:
            reporter.line(f"{node}: {reason}")
        reporter.line(f"{len(unexpected)} unexpected skips: install what they need, or fix the test")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
