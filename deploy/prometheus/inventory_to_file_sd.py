#!/usr/bin/env python3
"""Write Prometheus file_sd targets for every camera in an Ansible YAML inventory.

Inventory format (deploy/ansible/inventory/example.yml): a group `cameras` (top level, or under
`all.children`) whose children are the compile-target groups `x86_64`, `aarch64` and `cuda`; each
host may set `ansible_host` (default: the inventory name) and `edgecam_metrics_port` (default 8002)
in its own vars or in a group's `vars`. The nearest definition wins: host, target group, `cameras`,
then `all`, as Ansible resolves them.

    cameras:
      vars: {edgecam_metrics_port: 8002}
      children:
        x86_64:
          hosts:
            door-cam: {ansible_host: 192.0.2.10}

Output: one file_sd entry per host, `[{"targets": ["192.0.2.10:8002"], "labels": {"instance":
"door-cam", "target": "x86_64"}}]`. `instance` is the inventory name so alerts and dashboards say
which camera box, not which IP. Neither label name is one the server puts on a metric (camera,
model, version, stage, reason, code, kind), so Prometheus never renames one to `exported_*`.

Usage: inventory_to_file_sd.py INVENTORY.yml [-o targets/edgecam.json]   (stdout without -o)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PARENT_GROUP = "cameras"
TARGET_GROUPS = ("x86_64", "aarch64", "cuda")
DEFAULT_METRICS_PORT = 8002


class InventoryError(ValueError):
    """The inventory does not have the shape this script (and the Ansible role) expects."""


def _find_group(
    groups: Mapping[str, Any], name: str, above: tuple[Mapping[str, Any], ...] = ()
) -> tuple[Mapping[str, Any], tuple[Mapping[str, Any], ...]] | None:
    """Group `name` and the vars of the groups above it (outermost first), searched depth-first."""
    for group_name, group in groups.items():
        group = group or {}
        if group_name == name:
            return group, above
        found = _find_group(group.get("children") or {}, name, (*above, group.get("vars") or {}))
        if found is not None:
            return found
    return None


def _port(value: object, host: str) -> int:
    # A Jinja expression ("{{ ... }}") only Ansible could resolve: refuse rather than guess.
    if isinstance(value, bool) or not str(value).isdigit() or not 0 < int(str(value)) < 65536:
        raise InventoryError(f"host {host}: edgecam_metrics_port must be a port number, got {value!r}")
    return int(str(value))


def file_sd_targets(inventory: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The file_sd entries of every host under `cameras`, sorted by host name."""
    found = _find_group(inventory, PARENT_GROUP)
    if found is None:
        raise InventoryError(f"no group {PARENT_GROUP!r} in the inventory (top level: {sorted(inventory)})")
    cameras, outer_vars = found
    children = cameras.get("children") or {}
    unknown = sorted(set(children) - set(TARGET_GROUPS))
    if unknown:
        raise InventoryError(
            f"unknown target group(s) {unknown} under {PARENT_GROUP}; valid: {TARGET_GROUPS}"
        )
    entries: dict[str, dict[str, Any]] = {}
    for target, group in children.items():
        group = group or {}
        for host, host_vars in (group.get("hosts") or {}).items():
            if host in entries:
                raise InventoryError(f"host {host} is in two target groups; a camera has exactly one")
            merged: dict[str, Any] = {}
            for layer in (*outer_vars, cameras.get("vars") or {}, group.get("vars") or {}, host_vars or {}):
                merged.update(layer)
            address = merged.get("ansible_host", host)
            port = _port(merged.get("edgecam_metrics_port", DEFAULT_METRICS_PORT), host)
            # IPv6 literals need brackets in host:port.
            address = f"[{address}]" if ":" in str(address) else address
            entries[host] = {"targets": [f"{address}:{port}"], "labels": {"instance": host, "target": target}}
    return [entries[host] for host in sorted(entries)]


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one rename: Prometheus watches the file and must never read half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the prometheus user must read it
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("inventory", type=Path, help="Ansible YAML inventory")
    parser.add_argument("-o", "--output", type=Path, help="file_sd JSON to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        inventory = yaml.safe_load(args.inventory.read_text()) or {}
        text = json.dumps(file_sd_targets(inventory), indent=2) + "\n"
    except (OSError, yaml.YAMLError, InventoryError) as error:
        print(f"inventory_to_file_sd: {error}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_atomically(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
