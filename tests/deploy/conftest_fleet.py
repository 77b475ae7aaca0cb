"""A fleet of real cameras for the Ansible tests: systemd-nspawn containers in network namespaces.

Imported by tests/deploy/test_ansible_fleet.py (not a conftest.py, so it loads only there).

Layout (all made and removed by the fixture; nothing leaves the namespaces it creates):

    netns <id>-ctl : bridge ecbr0 10.77.0.1/24  <- ansible-playbook and health probes run here
      veth ecv<i>  <->  eth0 in netns <id>-cam<i> : 10.77.0.<10+i>/24, a booted Debian bookworm
                                                     (systemd + sshd) on an overlay of a cached rootfs

Cached between runs under $EDGECAM_TEST_CACHE (default /var/cache/edgecam-test): the debootstrap'ed
rootfs and the server's dependency wheels. Building them is the only step that reaches package
registries (debootstrap → the Debian mirror, pip download → the pip index), from the host's own
network; the fleet itself talks only inside the test's namespaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
HEALTH_PROBE = ANSIBLE_DIR / "roles" / "edgecam" / "files" / "edgecam-health"
VENV_BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("EDGECAM_TEST_CACHE", "/var/cache/edgecam-test"))
MIRROR = os.environ.get("EDGECAM_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
ROOTFS_PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,openssh-server,iproute2"
# The server's runtime dependencies for the cameras' Python (Debian bookworm: CPython 3.11, x86-64):
# exactly what `pip install edgecam[server]` resolves, read from pyproject.toml.
SERVER_REQUIREMENTS = [
    *tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"],
    *tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["server"],
]
SUBNET = "10.77.0"
CONTROLLER_IP = f"{SUBNET}.1"
GRPC_PORT = 8001
METRICS_PORT = 8002


def run(
    cmd: list[str], timeout: float = 120, check: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def missing_prerequisites() -> str | None:
    """Why the fleet cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, overlayfs, systemd-nspawn)"
    for tool in ("ip", "debootstrap", "systemd-nspawn", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return (
                f"{tool} is missing (apt-get install iproute2 debootstrap systemd-container openssh-client)"
            )
    if not (VENV_BIN / "ansible-playbook").exists():
        return f"ansible-playbook is not installed in {VENV_BIN} (pip install ansible-core)"
    return None


# ---- cached inputs -----------------------------------------------------------------------------


def _locked_build(final: Path, build: callable) -> Path:  # type: ignore[valid-type]
    """Build `final` once: into a temporary sibling, renamed into place when complete."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def rootfs() -> Path:
    """A minimal Debian bookworm with systemd, python3-venv and sshd (~1.5 min the first time)."""
    key = hashlib.sha256(f"bookworm {ROOTFS_PACKAGES}".encode()).hexdigest()[:8]

    def build(tmp: Path) -> None:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={ROOTFS_PACKAGES}",
                "bookworm",
                str(tmp),
                MIRROR,
            ],
            timeout=900,
        )

    return _locked_build(CACHE / f"rootfs-bookworm-{key}", build)


def dependency_wheels() -> Path:
    """The server's dependency wheels (~210 MB), downloaded once."""
    key = hashlib.sha256(" ".join(SERVER_REQUIREMENTS).encode()).hexdigest()[:8]

    def build(tmp: Path) -> None:
        run([str(VENV_BIN / "pip"), "download", "-q", "-d", str(tmp), *SERVER_REQUIREMENTS], timeout=900)

    return _locked_build(CACHE / f"wheels-{key}", build)


def wheelhouse(dest: Path) -> Path:
    """The cached dependency wheels plus a fresh wheel of this checkout of edgecam."""
    dest.mkdir(parents=True)
    for wheel in dependency_wheels().iterdir():
        os.link(wheel, dest / wheel.name)  # same filesystem: no 200 MB copy per run
    run([str(VENV_BIN / "pip"), "wheel", "-q", "--no-deps", "-w", str(dest), str(REPO)], timeout=300)
    return dest


# ---- the fleet ---------------------------------------------------------------------------------


@dataclass
class Camera:
    name: str
    address: str
    netns: str
    root: Path  # the overlay's merged view of the camera's filesystem, readable from the host
    process: subprocess.Popen[bytes] | None = None
    mounted: bool = False

    @property
    def grpc_address(self) -> str:
        return f"{self.address}:{GRPC_PORT}"

    @property
    def metrics_address(self) -> str:
        return f"{self.address}:{METRICS_PORT}"


@dataclass
class Fleet:
    """Cameras reachable only from `controller_netns`; run fleet-facing commands with `in_controller`."""

    workdir: Path
    controller_netns: str
    ssh_key: Path
    cameras: list[Camera] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def in_controller(
        self, cmd: list[str], timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(
            ["ip", "netns", "exec", self.controller_netns, *cmd], timeout=timeout, check=check, env=env
        )

    def in_camera(
        self, camera: Camera, command: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """A shell command on a camera, over the same ssh the playbooks use."""
        return self.in_controller(
            [
                "ssh",
                "-i",
                str(self.ssh_key),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ControlMaster=no",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                f"root@{camera.address}",
                command,
            ],
            timeout=timeout,
            check=False,
        )

    def healthy(self, camera: Camera) -> bool:
        """gRPC health of the camera's server, asked from the controller namespace."""
        probe = self.in_controller(
            [sys.executable, str(HEALTH_PROBE), camera.grpc_address], timeout=30, check=False
        )
        return probe.returncode == 0

    def metrics(self, camera: Camera) -> str:
        """The camera's Prometheus exposition text, fetched from the controller namespace."""
        fetch = (
            "import sys, urllib.request; "
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
        )
        return self.in_controller(
            [sys.executable, "-c", fetch, f"http://{camera.metrics_address}/metrics"], timeout=30
        ).stdout

    def metrics_addresses(self) -> list[str]:
        """HOST:PORT of every camera's /metrics (reachable from `controller_netns` only)."""
        return [c.metrics_address for c in self.cameras]

    def current_version(self, camera: Camera, model: str) -> str:
        link = camera.root / "opt/edgecam/models" / model / "current"
        return os.readlink(link)

    def write_inventory(
        self, path: Path, host_vars: dict[str, dict[str, object]], group_vars: dict[str, object]
    ) -> Path:
        hosts = {
            c.name: {
                "ansible_host": c.address,
                "edgecam_grpc_port": GRPC_PORT,
                "edgecam_metrics_port": METRICS_PORT,
                **host_vars.get(c.name, {}),
            }
            for c in self.cameras
        }
        inventory = {
            "cameras": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self.ssh_key),
                    **group_vars,
                },
                "children": {"x86_64": {"hosts": hosts}},
            }
        }
        path.write_text(yaml.safe_dump(inventory, sort_keys=False))
        return path

    def ansible_playbook(
        self, playbook: str, inventory: Path, *args: str, timeout: float = 900
    ) -> AnsibleRun:
        env = {
            **os.environ,
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            # No ssh masters that outlive the run (ControlPersist would keep them 60 s).
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPersist=no -o UserKnownHostsFile=/dev/null",
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORKS": "5",
        }
        started = time.monotonic()
        result = self.in_controller(
            [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), *args, str(ANSIBLE_DIR / playbook)],
            timeout=timeout,
            check=False,
            env=env,
        )
        seconds = time.monotonic() - started
        log = self.workdir / f"ansible-{playbook}-{int(time.time())}.log"
        log.write_text(result.stdout + result.stderr)
        return AnsibleRun(playbook, result.returncode, result.stdout + result.stderr, seconds, log)


@dataclass
class AnsibleRun:
    playbook: str
    returncode: int
    output: str
    seconds: float
    log: Path

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP counts per host: {"cam0": {"ok": 30, "changed": 0, "failed": 0, ...}}."""
        counts: dict[str, dict[str, int]] = {}
        for line in self.output.split("PLAY RECAP")[-1].splitlines():
            match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
            if match:
                counts[match[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match[2])}
        return counts

    def __str__(self) -> str:
        return f"ansible-playbook {self.playbook} → rc {self.returncode} ({self.log}):\n{self.output[-6000:]}"


def _boot(fleet: Fleet, camera: Camera, lower: Path, key_pub: str) -> None:
    base = fleet.workdir / camera.name
    upper, work = base / "upper", base / "work"
    for d in (upper, work, camera.root):
        d.mkdir(parents=True)
    (upper / "root/.ssh").mkdir(parents=True, mode=0o700)
    (upper / "root/.ssh/authorized_keys").write_text(key_pub)
    (upper / "root/.ssh/authorized_keys").chmod(0o600)
    (upper / "etc").mkdir(exist_ok=True)
    (upper / "etc/hostname").write_text(camera.name + "\n")
    (upper / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}",
            str(camera.root),
        ]
    )
    camera.mounted = True

    run(["ip", "netns", "add", camera.netns])
    ctl = fleet.controller_netns
    veth = f"ecv{camera.name[-1]}"
    run(["ip", "-n", ctl, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", camera.netns])
    run(["ip", "-n", ctl, "link", "set", veth, "master", "ecbr0", "up"])
    run(["ip", "-n", camera.netns, "addr", "add", f"{camera.address}/24", "dev", "eth0"])
    run(["ip", "-n", camera.netns, "link", "set", "eth0", "up"])
    run(["ip", "-n", camera.netns, "link", "set", "lo", "up"])

    console = (base / "console.log").open("wb")
    camera.process = subprocess.Popen(
        [
            "systemd-nspawn",
            "-q",
            "--register=no",
            "--keep-unit",
            f"--machine={camera.name}",
            "-D",
            str(camera.root),
            f"--network-namespace-path=/run/netns/{camera.netns}",
            "--console=read-only",
            "-b",
        ],
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_ssh(fleet: Fleet, camera: Camera, deadline: float) -> None:
    while True:
        assert camera.process is not None
        if camera.process.poll() is not None:
            console = (fleet.workdir / camera.name / "console.log").read_text(errors="replace")
            raise RuntimeError(
                f"{camera.name}: systemd-nspawn exited {camera.process.returncode}:\n{console[-3000:]}"
            )
        if fleet.in_camera(camera, "true", timeout=15).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{camera.name}: no ssh within the deadline")
        time.sleep(0.3)


def _teardown(fleet: Fleet) -> None:
    for camera in fleet.cameras:
        if camera.process is not None and camera.process.poll() is None:
            camera.process.send_signal(signal.SIGTERM)  # nspawn: orderly poweroff of the container
    for camera in fleet.cameras:
        if camera.process is None:
            continue
        try:
            camera.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            camera.process.kill()
            camera.process.wait(timeout=10)
    for camera in fleet.cameras:
        if camera.mounted and run(["umount", str(camera.root)], check=False).returncode != 0:
            run(["umount", "-l", str(camera.root)], check=False)
        run(["ip", "netns", "delete", camera.netns], check=False)
    run(["ip", "netns", "delete", fleet.controller_netns], check=False)


@contextlib.contextmanager
def fleet_of(count: int, workdir: Path) -> Iterator[Fleet]:
    """`count` booted cameras with sshd, torn down (containers, mounts, namespaces) even on failure."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    lower = rootfs()
    timings["rootfs"] = time.monotonic() - t0

    prefix = f"ec{os.getpid() % 100000}"
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    fleet = Fleet(workdir=workdir, controller_netns=f"{prefix}-ctl", ssh_key=key, timings=timings)
    (workdir / "ansible-tmp").mkdir()
    try:
        ctl = fleet.controller_netns
        run(["ip", "netns", "add", ctl])
        run(["ip", "-n", ctl, "link", "set", "lo", "up"])
        run(["ip", "-n", ctl, "link", "add", "ecbr0", "type", "bridge"])
        run(["ip", "-n", ctl, "addr", "add", f"{CONTROLLER_IP}/24", "dev", "ecbr0"])
        run(["ip", "-n", ctl, "link", "set", "ecbr0", "up"])

        t0 = time.monotonic()
        for i in range(count):
            camera = Camera(
                name=f"cam{i}",
                address=f"{SUBNET}.{10 + i}",
                netns=f"{prefix}-cam{i}",
                root=workdir / f"cam{i}" / "root",
            )
            fleet.cameras.append(camera)
            _boot(fleet, camera, lower, key.with_suffix(".pub").read_text())
        deadline = time.monotonic() + 120
        for camera in fleet.cameras:
            _wait_for_ssh(fleet, camera, deadline)
        timings["boot_to_ssh"] = time.monotonic() - t0
        yield fleet
    finally:
        _teardown(fleet)


def build_artifacts(dest: Path) -> dict[str, Path]:
    """A good fashion_cnn artifact for this CPU as versions 1 and 2, and a corrupt one."""
    from edgecam.models import fashion_cnn

    good = dest / "good"
    run(
        [
            str(VENV_BIN / "edgecam"),
            "compile",
            str(fashion_cnn.onnx_path()),
            "--target",
            "x86_64",
            "--out",
            str(good),
        ],
        timeout=300,
    )
    broken = dest / "broken"
    shutil.copytree(good, broken)
    library = broken / json.loads((good / "manifest.json").read_text())["library"]
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the server's sha256 check refuses it at start
    library.write_bytes(bytes(data))
    for d in (good, broken):
        d.chmod(0o755)
    return {"good": good, "broken": broken}


def skip_without_prerequisites() -> None:
    reason = missing_prerequisites()
    if reason:
        pytest.skip(reason)
