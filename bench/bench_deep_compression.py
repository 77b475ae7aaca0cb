"""Benchmark: Deep Compression with retraining (issue 19) on LeNet-300-100, LeNet-5 and the bundled CNN.

    .venv/bin/python bench/bench_deep_compression.py [--models lenet_300_100 lenet5 fashion_cnn]

Each network goes through one `edgecam compress` recipe: `iterative_prune` (Han et al. 2015: prune in
steps, retrain with the masks held) then `trained_sharing` (k-means centroids fine-tuned, indices
Huffman-coded into the artifact's weights file). The LeNets are first trained here on Fashion-MNIST
(bench/lenets.py, seeded). Measured in the same run, on all 10,000 test images through ONNX Runtime
and the model's own preprocessing: top-1 before and after, and the artifact's stored weight bytes
(coded weights + raw biases) against the fp32 weights. Targets: ≥ 40× at ≤ 0.5 pt drop (LeNets),
≥ 30× at ≤ 0.5 pt (bundled CNN). Checkpoints live in ~/.cache/edgecam/checkpoints: a rerun resumes.
The record goes to bench/results/bench_deep_compression-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from lenets import NETWORKS, every, train_and_export
from machine_info import machine, save_record, stamp
from reliability import met, target

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "edgecam" / "bench_deep_compression"
TRAINING = {
    "data": {"kind": "fashion_mnist", "split": "train", "limit": 55000},
    "validation": {"kind": "fashion_mnist", "split": "train", "offset": 55000, "limit": 5000},
    "batch_size": 128,
    "lr": 5e-4,
    "patience": None,
}
# Han et al.'s settings where they apply: fully connected layers pruned hardest (global magnitude
# ranking does that), conv layers kept at more bits than fully connected ones.
PASSES: dict[str, list[dict[str, Any]]] = {
    # 95% in 4 rounds of 2 epochs: 57x at -1.29 pt (88.64% -> 87.35%); gentler and longer here.
    "lenet_300_100": [
        {"kind": "iterative_prune", "sparsity": 0.93, "steps": 5, "epochs": 3, "scope": "global"},
        {"kind": "trained_sharing", "bits": 5, "epochs": 3},
    ],
    # 95% in 4 rounds of 2 epochs: 52.5x at -0.66 pt (90.58% -> 89.92%); 93% here.
    "lenet5": [
        {"kind": "iterative_prune", "sparsity": 0.93, "steps": 4, "epochs": 2, "exclude": ["/0/Conv"]},
        {"kind": "trained_sharing", "bits": 5, "layer_bits": {"/0/Conv": 8, "/2/Conv": 6}, "epochs": 2},
    ],
    # 0.3/0.6/0.9 in 3 rounds of 1 epoch (20,000 images): 60% kept 93.3% (validation), the jump to 90%
    # fell to 75.6% and sharing left 77.99% at 30.3x (bench_deep_compression-20261208-vm.json).
    "fashion_cnn": [
        {"kind": "iterative_prune", "sparsity": 0.9, "steps": 6, "epochs": 1, "exclude": ["/0/Conv"]},
        {"kind": "trained_sharing", "bits": 4, "layer_bits": {"/0/Conv": 8}, "epochs": 1},
    ],
}
BOUND = {"lenet_300_100": 40.0, "lenet5": 40.0, "fashion_cnn": 30.0}
MAX_DROP_PT = 0.5


def baseline(name: str, epochs: int) -> Path:
    if name == "fashion_cnn":
        from edgecam.models.fashion_cnn import onnx_path

        return onnx_path()
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}-e{epochs}-s0.onnx"
    if not path.exists():
        print(f"training {name} ({epochs} epochs at most)", flush=True)
        partial = path.with_suffix(".partial.onnx")
        train_and_export(name, partial, epochs)
        partial.replace(path)
    return path


def training(name: str) -> dict[str, Any]:
    """The recipe's training section; the bundled CNN (~20 MMACs per image, 30x LeNet-5) retrains on
    fewer images to fit the bench in an hour on 2 cores."""
    if name != "fashion_cnn":
        return TRAINING
    return {**TRAINING, "data": {**TRAINING["data"], "limit": 20000}}


def run_case(name: str, epochs: int, out_dir: Path) -> dict[str, Any]:
    from edgecam.compiler.compress import compress
    from edgecam.compiler.evaluate import MeasureOptions
    from edgecam.compiler.recipe import parse_recipe

    model = baseline(name, epochs)
    recipe = parse_recipe(
        {
            "target": "x86_64",
            "max_accuracy_drop": 100,  # the bench reports the drop; the gate must not hide a result
            "evaluation": {"kind": "fashion_mnist", "split": "test", "limit": 10000},
            "training": training(name),
            "passes": PASSES[name],
        },
        source=name,
    )
    show = every(20)
    started = time.monotonic()
    artifact_dir = out_dir / name
    if artifact_dir.exists():
        shutil.rmtree(artifact_dir)  # the artifact of an earlier run of the bench
    options = MeasureOptions(tvm=False)  # accuracy and sizes; the artifact is still compiled and verified
    _, report = compress(model, recipe, ROOT, artifact_dir, lambda text, done, total: show(text), options)
    original, final = report.steps[0], report.steps[-1]
    assert original.top1 is not None and final.top1 is not None
    files = {p.name: p.stat().st_size for p in artifact_dir.iterdir() if p.is_file()}
    return {
        "model": model.name,
        "training": training(name),
        "passes": PASSES[name],
        "fp32_weight_bytes": original.weight_bytes,
        "coded_weight_bytes": final.weight_bytes,
        "ratio": round(original.weight_bytes / final.weight_bytes, 3),
        "top1_before": original.top1,
        "top1_after": final.top1,
        "drop_pt": round((original.top1 - final.top1) * 100, 3),
        "steps": [
            {"step": s.step, "top1": s.top1, "weight_bytes": s.weight_bytes, "changes": s.changes}
            for s in report.steps
        ],
        "artifact_files": files,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*NETWORKS, "fashion_cnn"], choices=[*PASSES])
    parser.add_argument("--baseline-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=CACHE / "artifacts")
    # One thread: on a loaded 2-core host, two spinning OpenMP threads made epochs 1 s or 120 s at random.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)

    when, _ = stamp()
    results = {name: run_case(name, args.baseline_epochs, args.out) for name in args.models}
    targets = []
    for name, entry in results.items():
        targets.append(target(f"{name}: fp32 / coded weight bytes", entry["ratio"], ">=", BOUND[name], "x"))
        targets.append(target(f"{name}: top-1 drop", entry["drop_pt"], "<=", MAX_DROP_PT, "pt"))
    record = {
        "benchmark": "bench_deep_compression",
        "date": when,
        "machine": machine(torch=torch.__version__, onnxruntime=onnxruntime.__version__,
                           torch_threads=torch.get_num_threads()),
        "evaluation": "Fashion-MNIST test, all 10,000 images, ONNX Runtime CPU, model preprocessing",
        "results": results,
        "targets": targets,
    }  # fmt: skip
    for entry in targets:
        print(f"{'met' if met(entry) else 'NOT met'}: {entry['name']} = {entry['value']} "
              f"({entry['op']} {entry['bound']} {entry['unit']})")  # fmt: skip
    save_record("bench_deep_compression", record)


if __name__ == "__main__":
    main()
