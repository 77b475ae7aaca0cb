"""Sizes for the dimensions an ONNX model leaves open, so that it compiles to a static library.

Exporters leave the batch open by default (torch.onnx.export's dynamic_axes, the ONNX model zoo's
"N"), and some leave the image size open too. A camera feeds one frame of one size, so edgecam
builds that: an open batch (the first dimension) becomes 1 by itself, every other open dimension
needs a size from the user (`--input-shape NAME=1,3,224,224`). The outputs' shapes are then inferred
anew from the inputs' by ONNX shape inference; what stays open there is refused by name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgecam.compiler.errors import ModelImportError

log = logging.getLogger(__name__)


def parse_input_shapes(values: Sequence[str]) -> dict[str, list[int]]:
    """`NAME=1,3,224,224` options as {name: dims}; ValueError naming the option that is not one."""
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        try:
            sizes = [int(d) for d in dims.split(",")]
        except ValueError:
            sizes = []
        if not sep or not name or not sizes or any(d < 0 for d in sizes):
            raise ValueError(
                f"--input-shape {value!r}: expected NAME=D0,D1,... with sizes >= 0, e.g. input=1,3,224,224"
            )
        shapes[name] = sizes
    return shapes


def fix_open_dims(proto: Any, path: Path, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Give every open input dimension a size, in place.

    ModelImportError names the input, its shape and the option to use when a size is missing or
    `input_shapes` contradicts the model (an unknown name, another rank, another fixed size).
    """
    initializers = {i.name for i in proto.graph.initializer}
    graph_inputs = [v for v in proto.graph.input if v.name not in initializers]
    unknown = sorted(set(input_shapes) - {v.name for v in graph_inputs})
    if unknown:
        raise ModelImportError(
            f"{path}: --input-shape names {unknown}, which are not inputs of the model "
            f"(its inputs: {[v.name for v in graph_inputs]})"
        )
    changed = False
    for value in graph_inputs:
        dims = value.type.tensor_type.shape.dim
        shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        wanted = input_shapes.get(value.name)
        if wanted is not None:
            if len(wanted) != len(dims) or any(
                d.HasField("dim_value") and d.dim_value != w for d, w in zip(dims, wanted, strict=False)
            ):
                raise ModelImportError(
                    f"{path}: --input-shape {value.name}={','.join(map(str, wanted))} does not fit the "
                    f"model's input shape {shown}"
                )
            sizes = list(wanted)
        else:
            open_at = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
            if not open_at:
                continue
            if open_at != [0]:
                example = ",".join(
                    "1" if i == 0 else str(s) if isinstance(s, int) else "SIZE" for i, s in enumerate(shown)
                )
                raise ModelImportError(
                    f"{path}: input {value.name!r} has open dimensions {shown}; give their sizes with "
                    f"--input-shape {value.name}={example}"
                )
            sizes = [1] + [d.dim_value for d in dims[1:]]
            log.info("input %r: open batch dimension %r built as 1 (one frame per run)", value.name, shown[0])
        for dim, size in zip(dims, sizes, strict=True):
            if not dim.HasField("dim_value"):
                dim.dim_value = size  # dim_value and dim_param share a oneof: this clears the name
                changed = True
    if changed:
        _infer_output_shapes(proto, path)


def _infer_output_shapes(proto: Any, path: Path) -> None:
    """Recompute every intermediate and output shape from the now static inputs."""
    import onnx

    del proto.graph.value_info[:]  # shapes inferred for the open dimensions: stale now
    for output in proto.graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and assorted checker errors
        raise ModelImportError(
            f"{path}: output shapes cannot be inferred for the sizes given: {exc}"
        ) from None
    proto.CopyFrom(inferred)
    for output in proto.graph.output:
        tensor = output.type.tensor_type
        if not tensor.HasField("shape") or any(not d.HasField("dim_value") for d in tensor.shape.dim):
            raise ModelImportError(
                f"{path}: output {output.name!r} has no static shape once the inputs are sized "
                "(it depends on the data); export the model with fixed output sizes"
            )
