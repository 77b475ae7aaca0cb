"""The systemd unit the Ansible role installs: it renders, `systemd-analyze verify` accepts it
silently, and its hardening scores as systemd rates it (`security --offline`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

UNIT_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "edgecam.service.j2"
CHECKER = (
    Path(__file__).resolve().parents[2]
    / "deploy"
    / "ansible"
    / "roles"
    / "edgecam"
    / "files"
    / "edgecam-verify-unit"
)

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def render(tmp_path: Path, **variables: object) -> Path:
    """The unit as the role writes it, for an install prefix under tmp_path whose `edgecam` is this
    environment's real console script (verify refuses an ExecStart that is not executable)."""
    prefix = tmp_path / "opt-edgecam"
    (prefix / "venv" / "bin").mkdir(parents=True, exist_ok=True)
    link = prefix / "venv" / "bin" / "edgecam"
    if not link.exists():
        link.symlink_to(Path(sys.executable).parent / "edgecam")
    variables.setdefault("edgecam_prefix", str(prefix))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    # Ansible's `match` test (re.match from the start), the one non-Jinja feature the template uses.
    env.tests["match"] = lambda value, pattern: re.match(pattern, value) is not None
    text = env.from_string(UNIT_TEMPLATE.read_text())
    unit = tmp_path / "edgecam.service"
    unit.write_text(text.render(**variables))
    return unit


@pytest.mark.parametrize(
    "cameras",
    [[{"name": "door", "source": "rtsp://10.0.0.5/stream"}], [{"name": "usb", "source": "/dev/video0"}]],
    ids=["network-camera", "v4l2-camera"],
)
def test_unit_verifies_cleanly(tmp_path: Path, cameras: list[dict[str, str]]) -> None:
    unit = render(tmp_path, edgecam_cameras=cameras)
    checked = subprocess.run([str(CHECKER), str(unit)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    text = unit.read_text()
    assert "DynamicUser=yes" in text and "Restart=on-failure" in text
    # A USB camera needs its device node; a network camera gets no devices at all.
    assert ("DeviceAllow=char-video4linux rw" in text) == cameras[0]["source"].startswith("/dev/video")
    assert ("PrivateDevices=yes" in text) != cameras[0]["source"].startswith("/dev/video")


def test_checker_refuses_an_unknown_setting(tmp_path: Path) -> None:
    unit = render(tmp_path)
    unit.write_text(unit.read_text().replace("[Service]", "[Service]\nRestartt=always"))
    checked = subprocess.run([str(CHECKER), str(unit)], capture_output=True, text=True, timeout=60)
    assert checked.returncode != 0 and "Restartt" in checked.stderr


def test_hardening_exposure_is_low(tmp_path: Path) -> None:
    unit = render(tmp_path)
    report = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report.stdout + report.stderr)
    assert match, report.stdout + report.stderr
    # systemd's scale: 0 (locked down) … 10 (unprotected); below 2 is rated "OK".
    assert float(match[1]) < 2.0, report.stdout
