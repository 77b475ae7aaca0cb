"""The Ansible playbooks against a real fleet: three Debian cameras booted with systemd-nspawn.

site.yml installs and health-gates every camera, a second run changes nothing, and update-model.yml
with a corrupt artifact on the second camera rolls that camera back, keeps it healthy and stops the
rollout: serial order cam0 → cam1 → cam2, so cam0 runs the new version, cam1 the old one again,
and cam2 was never touched. A real Prometheus in the controller namespace, its targets generated from
the same inventory, scrapes every camera and fires EdgecamServerDown when a camera's server stops.
Run with `pytest -m slow tests/deploy/test_ansible_fleet.py` as root.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest_fleet import Fleet, build_artifacts, fleet_of, skip_without_prerequisites, wheelhouse
from monitoring_helpers import PROMETHEUS, fast_prometheus_config, needs_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MODEL = "fashion"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    skip_without_prerequisites()
    with fleet_of(3, tmp_path_factory.mktemp("fleet")) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def fleet_metrics_addresses(fleet: Fleet) -> list[str]:
    """HOST:PORT of each camera's /metrics; scrape from inside `fleet.controller_netns`."""
    return fleet.metrics_addresses()


@pytest.fixture(scope="module")
def inputs(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("inputs")
    return {"wheelhouse": wheelhouse(tmp / "wheelhouse"), **build_artifacts(tmp / "artifacts")}


def model(version: str, artifact: Path) -> dict[str, object]:
    return {"name": MODEL, "version": version, "artifacts": {"x86_64": str(artifact)}}


def group_vars(inputs: dict[str, Path], **extra: object) -> dict[str, object]:
    return {
        "edgecam_wheelhouse": str(inputs["wheelhouse"]),
        "edgecam_health_retries": 20,
        "edgecam_health_delay": 2,
        **extra,
    }


def cameras_of(name: str) -> dict[str, object]:
    return {"edgecam_cameras": [{"name": f"{name}-door", "source": "synthetic:fps=5"}]}


def served_versions(fleet: Fleet, camera_index: int) -> set[str]:
    text = fleet.metrics(fleet.cameras[camera_index])
    return set(
        re.findall(rf'edgecam_model_memory_bytes\{{[^}}]*model="{MODEL}"[^}}]*version="([^"]+)"', text)
    )


@pytest.fixture(scope="module")
def installed(fleet: Fleet, inputs: dict[str, Path]) -> dict[str, object]:
    inventory = fleet.write_inventory(
        fleet.workdir / "inventory-v1.yml",
        host_vars={c.name: cameras_of(c.name) for c in fleet.cameras},
        group_vars=group_vars(inputs, edgecam_models=[model("1", inputs["good"])]),
    )
    first = fleet.ansible_playbook("site.yml", inventory)
    second = fleet.ansible_playbook("site.yml", inventory) if first.returncode == 0 else None
    fleet.timings["site_first"] = first.seconds
    if second:
        fleet.timings["site_second"] = second.seconds
    return {"inventory": inventory, "first": first, "second": second}


def test_site_installs_every_camera_and_they_are_healthy(fleet: Fleet, installed: dict[str, object]) -> None:
    first = installed["first"]
    assert first.returncode == 0, str(first)
    assert set(first.recap()) == {c.name for c in fleet.cameras}
    for camera in fleet.cameras:
        assert fleet.healthy(camera), f"{camera.name} is not healthy after site.yml"
        assert fleet.current_version(camera, MODEL) == "1"
        state = fleet.in_camera(
            camera, "systemctl is-active edgecam; systemctl show -p User -p DynamicUser edgecam"
        )
        assert state.stdout.split()[0] == "active", state.stdout + state.stderr
        assert "DynamicUser=yes" in state.stdout
    assert served_versions(fleet, 0) == {"1"}


def test_site_twice_changes_nothing(installed: dict[str, object]) -> None:
    second = installed["second"]
    assert second is not None, "the first site.yml run failed"
    assert second.returncode == 0, str(second)
    changed = {host: counts["changed"] for host, counts in second.recap().items()}
    assert set(changed.values()) == {0}, f"second site.yml run changed {changed}\n{second}"


def test_bad_inventory_fails_only_the_hosts_it_concerns(
    fleet: Fleet, inputs: dict[str, Path], installed: dict[str, object]
) -> None:
    """A missing artifact, an unknown target group and an unreachable camera each fail their own host
    with a message saying what to fix; the healthy camera converges untouched."""
    assert installed["first"].returncode == 0, "site.yml failed"
    cam0, cam1, cam2 = fleet.cameras
    good = [model("1", inputs["good"])]
    inventory = fleet.write_inventory(
        fleet.workdir / "inventory-bad.yml",
        host_vars={
            cam0.name: cameras_of(cam0.name),
            cam1.name: {**cameras_of(cam1.name), "edgecam_models": [model("1", fleet.workdir / "no-such")]},
        },
        group_vars=group_vars(inputs, edgecam_models=good),
    )
    data = yaml.safe_load(inventory.read_text())
    hosts = data["cameras"]["children"]["x86_64"]["hosts"]
    data["cameras"]["children"]["riscv64"] = {"hosts": {cam2.name: hosts.pop(cam2.name)}}
    hosts["ghost"] = {"ansible_host": "10.77.0.99"}  # in the test's subnet; nobody answers
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))

    run = fleet.ansible_playbook("site.yml", inventory, "-e", "ansible_ssh_timeout=3")
    recap = run.recap()
    assert run.returncode != 0, str(run)
    assert recap[cam0.name]["failed"] == 0 and recap[cam0.name]["changed"] == 0, str(run)
    assert recap[cam1.name]["failed"] == 1 and "no readable manifest.json" in run.output, str(run)
    assert recap[cam2.name]["failed"] == 1 and "must be in exactly one target group" in run.output, str(run)
    assert recap["ghost"]["unreachable"] == 1, str(run)
    assert all(fleet.healthy(c) for c in fleet.cameras)
    assert [fleet.current_version(c, MODEL) for c in fleet.cameras] == ["1", "1", "1"]


def test_update_with_a_broken_artifact_rolls_back_and_stops_the_rollout(
    fleet: Fleet, inputs: dict[str, Path], installed: dict[str, object]
) -> None:
    assert installed["first"].returncode == 0, "site.yml failed; nothing to update"
    artifact = {"cam0": inputs["good"], "cam1": inputs["broken"], "cam2": inputs["good"]}
    inventory = fleet.write_inventory(
        fleet.workdir / "inventory-v2.yml",
        host_vars={
            c.name: {**cameras_of(c.name), "edgecam_models": [model("2", artifact[c.name])]}
            for c in fleet.cameras
        },
        group_vars=group_vars(inputs, edgecam_health_retries=8),
    )
    update = fleet.ansible_playbook("update-model.yml", inventory)
    fleet.timings["update_model"] = update.seconds

    assert update.returncode != 0, f"the rollout did not fail\n{update}"
    assert "cam1 failed the update" in update.output, str(update)
    recap = update.recap()
    assert recap["cam0"]["failed"] == 0 and recap["cam1"]["failed"] >= 1, str(update)
    assert "cam2" not in recap or recap["cam2"]["ok"] == 0, f"cam2 was touched\n{update}"

    # cam0 took the new version, cam1 is back on the old one, cam2 never left it; all serve.
    assert [fleet.current_version(c, MODEL) for c in fleet.cameras] == ["2", "1", "1"]
    assert all(fleet.healthy(c) for c in fleet.cameras)
    assert [served_versions(fleet, i) for i in range(3)] == [{"2"}, {"1"}, {"1"}]
    previous = fleet.cameras[1].root / "opt/edgecam/models" / MODEL / "previous"
    assert not previous.is_symlink(), "cam1's previous link should be as before the update (none)"


def test_rollback_returns_a_camera_to_its_previous_version(
    fleet: Fleet, installed: dict[str, object]
) -> None:
    inventory = fleet.workdir / "inventory-v2.yml"
    if fleet.current_version(fleet.cameras[0], MODEL) != "2":
        pytest.skip("needs cam0 on version 2 (the update test)")
    rollback = fleet.ansible_playbook("rollback.yml", inventory, "--limit", "cam0")
    fleet.timings["rollback"] = rollback.seconds
    assert rollback.returncode == 0, str(rollback)
    assert fleet.current_version(fleet.cameras[0], MODEL) == "1"
    # current and previous swapped: a second rollback would return to version 2.
    assert (fleet.cameras[0].root / "opt/edgecam/models" / MODEL / "previous").readlink() == Path("2")
    assert fleet.healthy(fleet.cameras[0])
    assert served_versions(fleet, 0) == {"1"}


@pytest.fixture(scope="module")
def prometheus_api(fleet: Fleet, installed: dict[str, object]) -> Iterator[Callable[..., Any]]:
    """A real Prometheus inside the controller namespace (the only place the cameras are reachable
    from), with targets from the test's inventory; returns `api(path, **params)` → its `data`."""
    workdir = fleet.workdir / "prometheus"
    workdir.mkdir()
    inventory = installed["inventory"]
    assert isinstance(inventory, Path)
    config = fast_prometheus_config(workdir, inventory)
    address = "127.0.0.1:9090"  # the controller namespace's own loopback: nothing else listens there
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            fleet.controller_netns,
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("w"),
    )
    fetch = (
        "import sys, urllib.request; "
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )

    def api(path: str, **params: str) -> Any:
        from urllib.parse import urlencode

        got = fleet.in_controller(
            [sys.executable, "-c", fetch, f"http://{address}{path}?{urlencode(params)}"], check=False
        )
        if got.returncode != 0:
            return None  # not up yet
        body = json.loads(got.stdout)
        return body.get("data") if body.get("status") == "success" else None

    try:
        yield api
    finally:
        process.terminate()
        process.wait(timeout=10)


def _poll(fetch: Callable[[], Any], deadline: float) -> Any:
    while True:
        result = fetch()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1)


@needs_prometheus
def test_prometheus_scrapes_the_fleet_and_alerts_when_a_camera_stops(
    fleet: Fleet, prometheus_api: Callable[..., Any]
) -> None:
    names = {c.name for c in fleet.cameras}
    deadline = time.monotonic() + 60

    def instances(expr: str) -> set[str]:
        data = prometheus_api("/api/v1/query", query=expr) or {"result": []}
        return {r["metric"].get("instance", "") for r in data["result"]}

    assert _poll(lambda: instances('up{job="edgecam"} == 1') == names, deadline), instances("up")
    assert _poll(lambda: instances("edgecam_frames_total > 0") == names, deadline)

    stopped = fleet.cameras[-1]
    fleet.in_camera(stopped, "systemctl stop edgecam")
    try:

        def server_down() -> list[dict[str, Any]]:
            data = prometheus_api("/api/v1/alerts") or {"alerts": []}
            return [
                a
                for a in data["alerts"]
                if a["labels"]["alertname"] == "EdgecamServerDown" and a["state"] == "firing"
            ]

        firing = _poll(server_down, time.monotonic() + 30)
        assert [a["labels"]["instance"] for a in firing] == [stopped.name], firing
    finally:
        fleet.in_camera(stopped, "systemctl start edgecam")
    assert _poll(lambda: fleet.healthy(stopped), time.monotonic() + 60)


def test_uninstall_removes_everything(fleet: Fleet, installed: dict[str, object]) -> None:
    uninstall = fleet.ansible_playbook("uninstall.yml", installed["inventory"])
    assert uninstall.returncode == 0, str(uninstall)
    for camera in fleet.cameras:
        assert not (camera.root / "opt/edgecam").exists()
        assert not (camera.root / "etc/systemd/system/edgecam.service").exists()
        assert not fleet.healthy(camera)
    print("fleet timings (s):", {k: round(v, 1) for k, v in fleet.timings.items()})
