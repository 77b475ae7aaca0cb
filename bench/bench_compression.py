"""Benchmark: the bundled CNN's compression recipes, measured as `edgecam report` measures them.

    .venv/bin/python bench/bench_compression.py [--runs 100] [--limit 2000]

For each recipe (models/fashion_cnn/recipes/ plus the FLOP-cutting filter pruning, which the shipped
filter_prune.yaml does not do because of its accuracy cost): top-1 on the first `--limit` Fashion-MNIST
test images, parameters, stored weight bytes (coded bytes where the artifact stores weights coded),
MACs, and batch-1 latency under ONNX Runtime (2 threads) and under TVM (the recipe's target, built
untuned), all in the same run. Then it checks issue 4's targets for the bundled CNN and says which
hold. The record goes to bench/results/bench_compression-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from machine_info import machine, save_record, stamp

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "models" / "fashion_cnn" / "recipes"
# Recipes measured: name → (recipe file, passes replacing the file's, or None to keep them).
CASES: dict[str, tuple[str, list[dict[str, Any]] | None]] = {
    "int8": ("int8.yaml", None),
    # 7-bit weights: the layout x86 CPUs without VNNI add exactly with vpmaddubsw (issue 5's int8 speed)
    "int8_7bit": ("int8.yaml", [{"kind": "int8", "reduce_range": True}]),
    "fp16": ("fp16.yaml", None),
    "prune_share": ("prune_share.yaml", None),
    "prune": ("prune.yaml", None),
    "low_rank": ("low_rank.yaml", None),
    "filter_prune": ("filter_prune.yaml", None),
    "filter_prune_flops": (
        "filter_prune.yaml",
        [{"kind": "filter_prune", "ratio": 0.2, "bias_correction": True}],
    ),
}


def run_case(name: str, limit: int, runs: int) -> dict[str, Any]:
    from edgecam.compiler.compress import measure_recipe
    from edgecam.compiler.evaluate import MeasureOptions
    from edgecam.compiler.recipe import load_recipe

    file, passes = CASES[name]
    recipe, base_dir = load_recipe(RECIPES / file)
    update: dict[str, Any] = {"evaluation": recipe.evaluation.model_copy(update={"limit": limit})}
    if passes is not None:
        update["passes"] = type(recipe).model_validate({**recipe.model_dump(), "passes": passes}).passes
    recipe = recipe.model_copy(update=update)
    assert recipe.model is not None
    print(f"{name}: {file} {[p.kind for p in recipe.passes]}", flush=True)
    measured = measure_recipe(base_dir / recipe.model, recipe, base_dir, options=MeasureOptions(runs=runs))
    steps = [step.model_dump(mode="json") for step in measured.report.steps]
    return {"recipe": file, "passes": [p.model_dump(mode="json") for p in recipe.passes], "steps": steps}


def ratio(before: float | None, after: float | None) -> float | None:
    return before / after if before and after else None


def summarize(name: str, case: dict[str, Any]) -> dict[str, Any]:
    first, last = case["steps"][0], case["steps"][-1]
    p50 = {engine: (first[engine] or {}).get("p50_ms") for engine in ("ort", "tvm")}
    after = {engine: (last[engine] or {}).get("p50_ms") for engine in ("ort", "tvm")}
    return {
        "top1_before": first["top1"],
        "top1_after": last["top1"],
        "drop_pp": round((first["top1"] - last["top1"]) * 100, 2),
        "weight_bytes": [first["weight_bytes"], last["weight_bytes"]],
        "weights_smaller_x": ratio(first["weight_bytes"], last["weight_bytes"]),
        "macs": [first["macs"], last["macs"]],
        "macs_removed": 1 - last["macs"] / first["macs"],
        "ort_p50_ms": [p50["ort"], after["ort"]],
        "tvm_p50_ms": [p50["tvm"], after["tvm"]],
        "tvm_speedup_x": ratio(p50["tvm"], after["tvm"]),
    }


def targets(summary: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Issue 4's targets for the bundled CNN (all without fine-tuning)."""
    int8, share, flops = summary["int8"], summary["prune_share"], summary["filter_prune_flops"]
    return {
        "int8 loses <= 0.5 pt top-1": int8["drop_pp"] <= 0.5,
        "prune + k-means + Huffman: stored weights >= 10x smaller": share["weights_smaller_x"] >= 10,
        "prune + k-means + Huffman: <= 1 pt drop": share["drop_pp"] <= 1.0,
        "filter pruning removes >= 30% of the MACs": flops["macs_removed"] >= 0.30,
        "filter pruning: TVM latency drops": (flops["tvm_speedup_x"] or 0) > 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed runs per model and engine")
    parser.add_argument("--limit", type=int, default=2000, help="Fashion-MNIST test images for top-1")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()

    import onnxruntime
    import tvm

    host = machine(onnxruntime=onnxruntime.__version__, tvm=tvm.__version__, onnxruntime_threads=2)
    cases = {name: run_case(name, args.limit, args.runs) for name in args.cases}
    summary = {name: summarize(name, case) for name, case in cases.items()}
    created = stamp()[0]
    record = {"created": created, "machine": host, "runs": args.runs, "images": args.limit}
    record |= {"summary": summary, "cases": cases}
    if set(CASES) <= set(cases):
        record["targets"] = targets(summary)
    print(f"\n{'case':20} {'top-1':>15} {'weights':>9} {'MACs':>7} {'ORT ms':>13} {'TVM ms':>15}")
    for name, row in summary.items():
        ort, tvm_ms = row["ort_p50_ms"], row["tvm_p50_ms"]
        print(
            f"{name:20} {row['top1_before'] * 100:6.2f}→{row['top1_after'] * 100:6.2f}% "
            f"{row['weights_smaller_x']:8.2f}× {-row['macs_removed'] * 100:+6.1f}% "
            f"{ort[0]:.3f}→{ort[1]:.3f} {tvm_ms[0]:6.2f}→{tvm_ms[1]:6.2f} ({row['tvm_speedup_x']:.2f}×)"
        )
    for what, held in record.get("targets", {}).items():
        print(f"{'met' if held else 'NOT met':8} {what}")
    save_record("bench_compression", record)


if __name__ == "__main__":
    main()
