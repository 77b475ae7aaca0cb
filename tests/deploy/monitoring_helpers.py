"""Shared by the Prometheus/Grafana tests: repository paths, promtool, and the deploy scripts as modules."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "edgecam-fleet.json"
EXAMPLE_INVENTORY = ROOT / "deploy" / "ansible" / "inventory" / "example.yml"

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (apt-get install prometheus: Debian ships it with Prometheus)"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="needs Debian's prometheus (apt-get install prometheus)"
)


def load_script(path: Path) -> ModuleType:
    """Import a deploy/ script (not part of the edgecam package) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def promtool(*args: str | Path, cwd: Path | None = None) -> str:
    """Run promtool; fail the test with its output when it does not exit 0."""
    result = subprocess.run(
        [str(PROMTOOL), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"
    return result.stdout
