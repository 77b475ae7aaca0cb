"""Conformance: ONNX's backend test cases compiled by edgecam for x86_64 and by plain TVM, same run.

    .venv/bin/python bench/bench_onnx_backend.py [--kinds node simple light ...] [--filter SUBSTRING]
                                                 [--limit N] [--every K] [--timeout 300] [--int8]

Each case (bench/onnx_backend_cases.py) runs in a worker process that runs many cases in turn and is
replaced when a case crashes it (TVM can segfault) or runs past `--timeout`. Per case: passed (edgecam
matches the expected outputs), failed_edgecam (plain TVM passes, edgecam does not: an edgecam bug),
failed_tvm (both fail), unsupported (the compiled-library contract cannot express it; the reason is
recorded). A failed edgecam build names the ONNX node it fails at (compiler/node_errors.py).
`--every K` takes every K-th case of each kind (a sample; the record says so). `--int8` also puts the
light networks through edgecam's int8 pass and compile_model's int8 check (onnx_backend_cases.run_int8;
as of this writing ONNX Runtime cannot load what its quantizer makes of these IR-3, opset-9 exports).
The record goes to bench/results/bench_onnx_backend-<date>-<host>.json, with `targets`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import onnx_backend_cases as cases_mod
from machine_info import machine, save_record, stamp

LIGHT_NETWORKS = 9  # the whole networks onnx ships in data/light
INT8 = "light-int8"  # the kind of the rows of --int8: light networks through edgecam's int8 pass


class Worker:
    """A `--worker` child process: case paths in on stdin, one JSON row per case out on stdout."""

    def __init__(self) -> None:
        env = {**os.environ, "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS", "1")}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # the process ended

    def run(self, case: Path, timeout: float, mode: str = "case") -> dict[str, Any] | str:
        """The case's row, or why there is none ("timeout", "crash (signal N)")."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{mode}\t{case}\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                return "timeout"
            if line is None:
                return f"crash (exit {self.proc.wait()})"
            if line.startswith("{"):
                return json.loads(line)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def worker_main() -> None:
    """Run the cases named on stdin; rows on stdout (the rest of stdout goes to stderr)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # TVM's importer prints; keep the protocol's stream clean
    for line in sys.stdin:
        mode, _, where = line.strip().partition("\t")
        case = Path(where)
        try:
            row = cases_mod.run_int8(case) if mode == "int8" else cases_mod.run_case(case)
        except Exception as exc:  # the harness's own failure on this case (unreadable data, ...)
            row = {
                "case": case.stem if case.suffix else case.name,
                "status": "harness_error",
                "edgecam": "not run",
                "tvm": "not run",
                "error": f"{type(exc).__name__}: {exc}"[:300],
            }
        out.write(json.dumps(row) + "\n")
        out.flush()


def run_all(paths: list[tuple[str, Path]], timeout: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    worker = Worker()
    for i, (kind, case) in enumerate(paths):
        result = worker.run(case, timeout, "int8" if kind == INT8 else "case")
        if isinstance(result, str):  # no row: the worker is stuck or dead; start afresh
            worker.stop()
            worker = Worker()
            result = {
                "case": case.stem if case.suffix else case.name,
                "status": "failed_edgecam",
                "edgecam": result,
                "tvm": "not run",
                "seconds": timeout,
            }
        result["kind"] = kind
        if kind == INT8 and "status" not in result:
            result["status"] = "passed" if result.get("int8") == "pass" else "failed_edgecam"
        rows.append(result)
        node = (
            f" at node {result['node']['name']} ({result['node']['op_type']})" if result.get("node") else ""
        )
        detail = result.get("reason") or (result.get("edgecam") if result["status"] != "passed" else "")
        print(f"[{i + 1}/{len(paths)}] {kind}/{result['case']}: {result['status']}{node} {str(detail)[:200]}")
        sys.stdout.flush()
    worker.stop()
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = by_kind.setdefault(row["kind"], Counter())
        counts[row["status"]] += 1
        counts["edgecam_pass"] += row.get("edgecam") == "pass"
        counts["tvm_pass"] += row.get("tvm") == "pass"
        counts["tvm_only"] += row.get("tvm") == "pass" and row.get("edgecam") != "pass"
        counts["edgecam_only"] += row.get("edgecam") == "pass" and row.get("tvm") != "pass"
        # Passed through the library, not an artifact: the server refused it or ONNX Runtime cannot
        # run the model to verify one (the row's "path" says which).
        counts["passed_without_artifact"] += row.get("edgecam") == "pass" and str(row.get("path")).startswith(
            "library ("
        )
    return {kind: dict(counts) for kind, counts in by_kind.items()}


def _target(name: str, value: int, op: str, bound: int, unit: str) -> dict[str, Any]:
    return {"name": name, "value": value, "op": op, "bound": bound, "unit": unit}


def targets(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's bounds, for the kinds this run covered."""
    found: list[dict[str, Any]] = []
    if "node" in summary:
        margin = summary["node"].get("edgecam_pass", 0) - summary["node"].get("tvm_pass", 0)
        found.append(_target("node: edgecam passes - plain TVM passes", margin, ">=", 0, "cases"))
    regressions = sum(s.get("tvm_only", 0) for s in summary.values())
    found.append(_target("cases plain TVM passes and edgecam fails", regressions, "<=", 0, "cases"))
    if "light" in summary:
        light = sum(r.get("edgecam") == "pass" for r in rows if r["kind"] == "light")
        found.append(_target("light networks compiled and matching", light, ">=", LIGHT_NETWORKS, "networks"))
    if INT8 in summary:
        tried = sum(r["kind"] == INT8 for r in rows)
        name = "light networks through edgecam's int8 pass, built and verified against ONNX Runtime's int8"
        found.append(_target(name, summary[INT8].get("passed", 0), ">=", tried, "networks"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kinds", nargs="+", default=list(cases_mod.KINDS), choices=cases_mod.KINDS)
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases per kind (0: all)")
    parser.add_argument("--every", type=int, default=1, help="every K-th case of each kind (a sample)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--int8", action="store_true", help="also the light networks through the int8 pass")
    args = parser.parse_args()
    if args.worker:
        worker_main()
        return
    paths: list[tuple[str, Path]] = []
    for kind in args.kinds:
        chosen = [c for c in cases_mod.cases(kind) if args.filter in c.name][:: max(args.every, 1)]
        paths += [(kind, c) for c in (chosen[: args.limit] if args.limit else chosen)]
        if args.int8 and kind == "light":
            paths += [(INT8, c) for c in (chosen[: args.limit] if args.limit else chosen)]
    started, _ = stamp()
    t0 = time.perf_counter()
    rows = run_all(paths, args.timeout)
    summary = summarize(rows)
    print(json.dumps(summary, indent=1))
    import onnx
    import tvm

    record = {
        "benchmark": "bench_onnx_backend",
        "started": started,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "onnx": onnx.__version__,
        "tvm": tvm.__version__,
        "selection": {
            "kinds": args.kinds,
            "filter": args.filter,
            "limit": args.limit,
            "every": args.every,
            "timeout_s": args.timeout,
            "sampled": args.every > 1 or bool(args.limit or args.filter),
        },
        "summary": summary,
        "targets": targets(summary, rows),
        "cases": rows,
    }
    save_record("bench_onnx_backend", record)


if __name__ == "__main__":
    main()
