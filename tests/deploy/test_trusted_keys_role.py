"""The role's trusted-keys tasks and config template, run by real Ansible on this machine (local
connection, a scratch config dir): keys installed, a dropped key removed, trusted_keys in config.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgecam.server.settings import ServerSettings
from edgecam.signing import generate_key_pair, load_public_keys

ROLE = Path(__file__).resolve().parents[2] / "deploy" / "ansible" / "roles" / "edgecam"
# The dev extra installs ansible-core beside the interpreter; a venv that shares another's packages
# finds it on PATH.
_BESIDE = Path(sys.executable).parent / "ansible-playbook"
PLAYBOOK = _BESIDE if _BESIDE.exists() else Path(shutil.which("ansible-playbook") or _BESIDE)

# ansible-playbook comes with the dev extra: its absence fails the test rather than skipping it.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the role's files are owned by root")


def _converge(tmp_path: Path, keys: list[Path]) -> str:
    config_dir = tmp_path / "etc-edgecam"
    config_dir.mkdir(exist_ok=True)
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml")],
            "tasks": [
                {"ansible.builtin.import_tasks": str(ROLE / "tasks" / "keys.yml")},
                {
                    "name": "Write config.yaml",
                    "ansible.builtin.template": {
                        "src": str(ROLE / "templates" / "config.yaml.j2"),
                        "dest": str(config_dir / "config.yaml"),
                        "mode": "0644",
                    },
                },
            ],
            "handlers": [{"name": "Restart edgecam", "ansible.builtin.debug": {"msg": "edgecam restarted"}}],
        }
    ]
    playbook, extra = tmp_path / "play.yml", tmp_path / "extra.json"
    playbook.write_text(json.dumps(play))  # JSON is YAML
    # Extra vars: above the role defaults loaded as vars_files (play vars would rank below them).
    overrides = {
        "edgecam_config_dir": str(config_dir),
        "edgecam_trusted_keys": [str(k) for k in keys],
        "edgecam_models": [{"name": "tiny", "version": 1, "artifacts": {}}],
        "edgecam_active_versions": {"tiny": "1"},
        "ansible_python_interpreter": str(PLAYBOOK.parent / "python"),
    }
    extra.write_text(json.dumps(overrides))
    result = subprocess.run(
        [str(PLAYBOOK), "-i", "localhost,", "-e", f"@{extra}", str(playbook)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_keys_are_installed_rotated_and_configured(tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "keys", ignore_errors=True)
    for name in ("old", "new"):
        generate_key_pair(tmp_path / "keys" / name, tmp_path / "keys" / f"{name}.pub")
    old, new = tmp_path / "keys" / "old.pub", tmp_path / "keys" / "new.pub"
    installed = tmp_path / "etc-edgecam" / "trusted_keys"

    out = _converge(tmp_path, [old, new])  # rotation under way: both trusted
    assert sorted(p.name for p in installed.iterdir()) == ["new.pub", "old.pub"]
    assert "edgecam restarted" in out
    settings = ServerSettings.load(tmp_path / "etc-edgecam" / "config.yaml")
    assert settings.trusted_keys == [installed]
    assert len(load_public_keys(settings.trusted_keys)) == 2

    _converge(tmp_path, [new])  # rotation done: the old key is revoked on the camera
    assert [p.name for p in installed.iterdir()] == ["new.pub"]
    again = _converge(tmp_path, [new])
    assert "edgecam restarted" not in again  # nothing changed, no restart

    _converge(tmp_path, [])
    assert list(installed.iterdir()) == []
    assert ServerSettings.load(tmp_path / "etc-edgecam" / "config.yaml").trusted_keys == []
