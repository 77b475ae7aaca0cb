"""Benchmark: what 7-bit weights cost EfficientNet-Lite0 layer by layer, and what top-1 agreement on
the evaluation set can resolve.

    .venv/bin/python bench/bench_int8_sensitivity.py [--keep 0 1 2 4 8 16 24]

Applies models/efficientnet_lite0/recipes/int8.yaml twice, with full int8 weights and with 7-bit ones
(`reduce_range`: the same activation ranges, weights and bias-corrected biases re-quantized; depthwise
convs keep 8 bits there since 2026-12-03's night: bench_int8_sensitivity-20261203-vm.json predates it,
-vm-2 does not). Then, under ONNX Runtime's exact int8 kernels on the recipe's 222 evaluation images:
- each Conv/Gemm alone given its 7-bit weights (and biases): the change of the relative logit error
  (agreement.relative_logit_error: ‖int8 − fp32‖ over fp32's spread) and the top-1 agreement with fp32;
- the `--keep` layers whose 7-bit weights cost most kept at full int8, all others 7-bit.
The logit error says which layers matter; the agreement shows how far it moves without a trend
(the street frames hold no ImageNet object and their top-1 is a near tie). Record:
bench/results/bench_int8_sensitivity-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import numpy as np
from machine_info import machine, save_record, stamp

WORKDIR = Path(".cache/bench")


def layer_weights(model: Any, donor: set[str]) -> list[tuple[str, list[str]]]:
    """(Conv/Gemm name, the initializers its weight and bias are read from) for each quantized layer."""
    producers = {out: node for node in model.graph.node for out in node.output}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        names = []
        for name in node.input[1:]:
            dq = producers.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                names += [i for i in dq.input if i in donor]
        if names:
            layers.append((node.name, names))
    return layers


def with_initializers(model: Any, donor: dict[str, Any], names: set[str]) -> Any:
    """A copy of `model` whose initializers in `names` are `donor`'s."""
    mixed = copy.deepcopy(model)
    for init in mixed.graph.initializer:
        if init.name in names:
            init.CopyFrom(donor[init.name])
    return mixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=int, nargs="*", default=[0, 1, 2, 4, 8, 16, 24])
    args = parser.parse_args()
    import onnxruntime

    from edgecam.models.efficientnet_lite0.agreement import (
        agreement,
        apply_recipe,
        logits,
        relative_logit_error,
        session,
    )

    model = WORKDIR / "efficientnet_lite0.onnx"
    if not model.is_file():
        raise SystemExit(f"{model} is missing: run bench/bench_int8_efficientnet.py once to export it")
    full = apply_recipe(model, WORKDIR / "sensitivity-8bit")
    seven = apply_recipe(model, WORKDIR / "sensitivity-7bit", options={"reduce_range": True})
    images = full.evaluation
    reference = logits(session(full.fp32), images)

    def measure(candidate: Any) -> dict[str, float]:
        out = logits(session(candidate), images)
        return {"agreement": agreement(reference, out), "logit_error": relative_logit_error(reference, out)}

    donor = {init.name: init for init in seven.compressed.graph.initializer}
    baseline = {"int8": measure(full.compressed), "int8_7bit": measure(seven.compressed)}
    print(f"full int8: {baseline['int8']}\n7-bit: {baseline['int8_7bit']}", flush=True)
    layers = []
    for name, names in layer_weights(full.compressed, set(donor)):
        row = {"layer": name, **measure(with_initializers(full.compressed, donor, set(names)))}
        row["logit_error_change"] = row["logit_error"] - baseline["int8"]["logit_error"]
        layers.append((row, names))
        print(f"{name:45} {row['logit_error_change']:+.5f}  agreement {row['agreement']:.3f}", flush=True)
    layers.sort(key=lambda entry: -entry[0]["logit_error_change"])
    sweep = []
    for keep in args.keep:
        sevens = {n for _, names in layers[keep:] for n in names}
        row = {"kept_full": keep, **measure(with_initializers(full.compressed, donor, sevens))}
        sweep.append(row)
        print(f"{keep:2} most costly layers kept at full int8: {row}", flush=True)
    count = len(images)
    p = baseline["int8"]["agreement"]
    created = stamp()[0]
    host = machine(onnxruntime=onnxruntime.__version__)
    record = {
        "created": created,
        "machine": host,
        "images": count,
        # One standard error of an agreement near p measured on this many images (binomial).
        "agreement_standard_error": float(np.sqrt(p * (1 - p) / count)),
        "baseline": baseline,
        "layers": [row for row, _ in layers],
        "keep_sweep": sweep,
    }
    save_record("bench_int8_sensitivity", record)


if __name__ == "__main__":
    main()
