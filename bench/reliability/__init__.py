"""Examinations of a running camera server, one module each: `run(args) -> dict`.

bench/bench_reliability.py imports every module listed there that exists, calls its optional
`add_arguments(parser)` for its own flags, then `run(args)` (args.quick: a bounded version for CI),
and merges what they return: their figures, and a `targets` list made with `target()` below. The
request strategies (oip_requests.py) are shared with tests/server/test_reliability.py.
"""

from __future__ import annotations

import argparse
import json
from types import ModuleType
from typing import Any

OPS = ("<", "<=", "==", ">=", ">")


def target(name: str, value: float | None, op: str, bound: float, unit: str) -> dict[str, Any]:
    """One line of a record's `targets`: `value op bound` is what the issue asks for; None: never happened."""
    if op not in OPS:
        raise ValueError(f"target {name!r}: op {op!r}; use one of {OPS}")
    # float(): figures measured with numpy (np.int64 is no JSON number).
    measured = None if value is None else float(value)
    return {"name": name, "value": measured, "op": op, "bound": bound, "unit": unit}


def met(entry: dict[str, Any]) -> bool:
    value, bound = entry["value"], entry["bound"]
    if value is None:  # e.g. a camera that never recovered
        return False
    return {
        "<": value < bound,
        "<=": value <= bound,
        "==": value == bound,
        ">=": value >= bound,
        ">": value > bound,
    }[entry["op"]]


def run_alone(module: ModuleType) -> None:
    """`python -m bench.reliability.NAME`: one examination, its flags parsed and its figures printed."""
    parser = argparse.ArgumentParser(description=(module.__doc__ or module.__name__).splitlines()[0])
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    print(json.dumps(module.run(parser.parse_args()), indent=1))
