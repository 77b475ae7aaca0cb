"""Shared by the Prometheus/Grafana tests: repository paths, promtool, and the deploy scripts as modules."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

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


def fast_prometheus_config(workdir: Path, inventory: Path, scrape_s: int = 1) -> Path:
    """The committed config and rules, scraped every `scrape_s` seconds and with `for:` cut to 2 s,
    and file_sd targets generated from an Ansible inventory by the committed script.

    Production `for:` values (1m … 2h) stay in the committed rules; only this temporary copy is
    rewritten, so a test sees an alert fire in seconds.
    """
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    interval = f"{scrape_s}s"
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    (workdir / "rules").mkdir()
    for name in ("recording.yml", "alerts.yml"):
        text = re.sub(r"^(\s+for:) \S+$", r"\1 2s", (RULES_DIR / name).read_text(), flags=re.M)
        (workdir / "rules" / name).write_text(text)
    file_sd = load_script(PROMETHEUS_DIR / "inventory_to_file_sd.py")
    assert file_sd.main([str(inventory), "-o", str(workdir / "targets" / "edgecam.json")]) == 0
    return workdir / "prometheus.yml"
