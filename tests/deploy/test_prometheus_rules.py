"""deploy/prometheus: the config and rules pass promtool, every alert has unit tests, file_sd is right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from monitoring_helpers import (
    EXAMPLE_INVENTORY,
    PROMETHEUS_DIR,
    RULES_DIR,
    load_script,
    needs_promtool,
    promtool,
)

file_sd = load_script(PROMETHEUS_DIR / "inventory_to_file_sd.py")

FLEET = """
all:
  vars: {edgecam_metrics_port: 9100}
  children:
    cameras:
      vars: {ansible_user: root}
      children:
        x86_64:
          hosts:
            door-cam: {ansible_host: 10.0.0.10, edgecam_metrics_port: 8002}
            gate-cam: {ansible_host: 10.0.0.13}
        aarch64:
          vars: {edgecam_metrics_port: 9002}
          hosts:
            yard-cam: {ansible_host: "fd00::11"}
        cuda:
          hosts:
            dock-jetson:
"""
SERVER_WIDE = {"EdgecamServerDown", "EdgecamMemoryGrowing"}


@needs_promtool
def test_config_passes_promtool() -> None:
    out = promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert "SUCCESS: 2 rule files found" in out


@needs_promtool
def test_rules_pass_promtool() -> None:
    promtool("check", "rules", RULES_DIR / "recording.yml", RULES_DIR / "alerts.yml")


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    promtool("test", "rules", RULES_DIR / "tests.yml")


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((RULES_DIR / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    cases = [
        case
        for test in yaml.safe_load((RULES_DIR / "tests.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert alerts == firing == silent, f"alerts {alerts}, firing tests {firing}, silent tests {silent}"
    assert len(alerts) == 8


def test_every_alert_names_where_in_its_annotations() -> None:
    for group in yaml.safe_load((RULES_DIR / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            notes = rule["annotations"]
            assert {"summary", "description"} <= set(notes), rule["alert"]
            # Per-camera alerts name the camera; server-wide ones (no camera label) the box.
            needle = "$labels.instance" if rule["alert"] in SERVER_WIDE else "$labels.camera"
            assert needle in notes["summary"] and "$labels.instance" in notes["description"], rule["alert"]


def test_file_sd_resolves_ports_and_labels_like_ansible() -> None:
    entries = file_sd.file_sd_targets(yaml.safe_load(FLEET))
    assert entries == [
        {"targets": ["dock-jetson:9100"], "labels": {"instance": "dock-jetson", "target": "cuda"}},
        {"targets": ["10.0.0.10:8002"], "labels": {"instance": "door-cam", "target": "x86_64"}},
        {"targets": ["10.0.0.13:9100"], "labels": {"instance": "gate-cam", "target": "x86_64"}},
        {"targets": ["[fd00::11]:9002"], "labels": {"instance": "yard-cam", "target": "aarch64"}},
    ]


@pytest.mark.skipif(not EXAMPLE_INVENTORY.exists(), reason="deploy/ansible/inventory/example.yml not there")
def test_file_sd_of_the_example_inventory(tmp_path: Path) -> None:
    out = tmp_path / "targets" / "edgecam.json"
    assert file_sd.main([str(EXAMPLE_INVENTORY), "-o", str(out)]) == 0
    entries = json.loads(out.read_text())
    assert {e["labels"]["target"] for e in entries} == {"x86_64", "aarch64", "cuda"}
    assert all(e["targets"][0].endswith(":8002") for e in entries)
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("inventory", "message"),
    [
        ("other: {hosts: {a: }}", "no group 'cameras'"),
        ("cameras: {children: {riscv: {hosts: {a: }}}}", "unknown target group"),
        ("cameras: {children: {x86_64: {hosts: {a: }}, cuda: {hosts: {a: }}}}", "two target groups"),
        ("cameras: {children: {x86_64: {hosts: {a: {edgecam_metrics_port: '{{ p }}'}}}}}", "port number"),
    ],
)
def test_file_sd_refuses_a_bad_inventory(inventory: str, message: str) -> None:
    with pytest.raises(file_sd.InventoryError, match=message):
        file_sd.file_sd_targets(yaml.safe_load(inventory))


@needs_promtool
def test_config_with_generated_targets_passes_promtool(tmp_path: Path) -> None:
    # The layout an operator installs: prometheus.yml next to rules/ and a generated targets/.
    (tmp_path / "rules").mkdir()
    for name in ("recording.yml", "alerts.yml"):
        (tmp_path / "rules" / name).write_text((RULES_DIR / name).read_text())
    (tmp_path / "prometheus.yml").write_text((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (tmp_path / "inventory.yml").write_text(FLEET)
    assert (
        file_sd.main([str(tmp_path / "inventory.yml"), "-o", str(tmp_path / "targets" / "edgecam.json")]) == 0
    )
    out = promtool("check", "config", tmp_path / "prometheus.yml")
    assert "WARNING" not in out
