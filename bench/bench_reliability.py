"""Benchmark: the reliability examinations of a camera server, one record with every figure and target.

    .venv/bin/python bench/bench_reliability.py [--only NAME] [--quick]

Runs each examination module of bench/reliability/ that exists (malformed requests, camera faults,
prediction streams, memory, hot reloads; a module not there yet is reported as not run), merges
their figures and `targets` ({"name","value","op","bound","unit"}, plus "met" and the module) and
writes bench/results/bench_reliability-<date>-<host>.json. --quick runs the bounded version CI can
afford; its record is named ...-quick.json.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from types import ModuleType
from typing import Any

from machine_info import machine, save_record, stamp
from reliability import met

EXAMINATIONS = ("malformed", "faults", "streams", "memory", "reload")


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"reliability.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"reliability.{name}":
            return None  # not written yet
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=EXAMINATIONS, action="append", help="run only these (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a bounded run, for CI")
    modules = {name: _module(name) for name in EXAMINATIONS}
    for module in modules.values():
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    args = parser.parse_args()

    figures: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    not_run: dict[str, str] = {}
    for name, module in modules.items():
        if args.only and name not in args.only:
            not_run[name] = "not selected (--only)"
            continue
        if module is None:
            not_run[name] = f"bench/reliability/{name}.py does not exist yet"
            continue
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            result = dict(module.run(args))
        except Exception as exc:  # one broken examination must not lose the others' figures
            traceback.print_exc()
            not_run[name] = f"failed: {type(exc).__name__}: {exc}"
            continue
        result["seconds"] = round(time.perf_counter() - started, 1)
        for entry in result.pop("targets", []):
            targets.append({**entry, "module": name, "met": met(entry)})
        figures[name] = result
    record = {
        "created": stamp()[0],
        "machine": machine(),
        "quick": args.quick,
        "figures": figures,
        "not_run": not_run,
        "targets": targets,
    }
    for entry in targets:
        mark = "ok  " if entry["met"] else "MISS"
        bound = f"{entry['op']} {entry['bound']} {entry['unit']}"
        print(f"{mark} {entry['module']}: {entry['name']}: {entry['value']} {bound}")
    for name, why in not_run.items():
        print(f"not run: {name}: {why}")
    save_record("bench_reliability", record, suffix="-quick" if args.quick else "")


if __name__ == "__main__":
    main()
