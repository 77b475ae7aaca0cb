"""ONNX in: edgecam metadata, tensor specs, and the Relax module TVM compiles."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecam.compiler.errors import ModelImportError
from edgecam.compiler.frontends.open_dims import fix_open_dims
from edgecam.model import (
    Described,
    MetadataError,
    ModelDescription,
    TensorSpec,
    check_preprocessing,
    describe,
)

# ONNX TensorProto element types → KServe datatypes.
_ONNX_TO_KSERVE = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}


@dataclass
class OnnxModel(Described):
    """An ONNX model the compiler builds: the file, its proto and its description (edgecam/model.py)."""

    path: Path
    proto: Any  # onnx.ModelProto
    description: ModelDescription

    # The name as the compiler reads it; the other fields of the description come from Described.
    @property
    def name(self) -> str:
        return self.description.model_name


def load_onnx(path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> OnnxModel:
    """Read an ONNX file and its edgecam metadata; refuse what the compiler cannot build yet.

    Open input dimensions get sizes (compiler/frontends/open_dims.py): an open batch becomes 1, the
    others come from `input_shapes` ({input name: dims}).
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"{path} does not exist")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises several unrelated types for unreadable files
        raise ModelImportError(f"{path} is not a valid ONNX model: {exc}") from exc
    fix_open_dims(proto, path, input_shapes or {})
    inputs, outputs = tensor_specs(proto, path)
    metadata = {p.key: p.value for p in proto.metadata_props}
    try:
        description = describe(metadata, inputs, outputs, path.stem, str(path))
        # Verification feeds frames through the preprocessing: it must make the first input.
        check_preprocessing(description.preprocessing, inputs[0], str(path))
    except MetadataError as exc:
        raise ModelImportError(str(exc)) from None
    return OnnxModel(path, proto, description)


def tensor_specs(proto: Any, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's inputs (initializers left out) and outputs as tensor specs; ModelImportError for
    what a compiled library cannot take or return (dynamic shapes, other element types, no inputs)."""
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [_spec(v, path) for v in proto.graph.input if v.name not in initializers]
    outputs = [_spec(v, path) for v in proto.graph.output]
    if not inputs:
        raise ModelImportError(f"{path} has no graph inputs (every input is an initializer); nothing to feed")
    return inputs, outputs


def _spec(value: Any, path: Path) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if any(d < 0 for d in dims):  # 0 is a static size: an empty tensor
        raise ModelImportError(
            f"{path}: tensor {value.name!r} has dynamic shape {dims}; edgecam compiles static shapes only "
            "(size the inputs with --input-shape, or export with fixed sizes)"
        )
    datatype = _ONNX_TO_KSERVE.get(tensor.elem_type)
    if datatype is None:
        raise ModelImportError(
            f"{path}: tensor {value.name!r} has unsupported ONNX element type {tensor.elem_type}"
        )
    return TensorSpec(name=value.name, datatype=datatype, shape=dims)


def to_relax(model: OnnxModel, params: Sequence[str] = ()) -> Any:
    """The Relax IRModule with weights bound as constants (what the build pipelines expect), except the
    initializers named in `params`: those become arguments of `main` after the inputs, in that order,
    and `main`'s `num_input` counts the real inputs only (so LiftTransformParams can tell them apart).

    Turning only those initializers into graph inputs (rather than `keep_params_in_input=True` and
    binding the rest back) leaves every other weight exactly as the constant path imports it.
    """
    proto = _initializers_as_inputs(model, params) if params else model.proto
    try:
        with warnings.catch_warnings():
            # Initializer names such as "onnx::Conv_54" are renamed as argument names; harmless here,
            # since the runtime passes the arguments by position.
            warnings.filterwarnings("ignore", message="Renaming name", category=UserWarning)
            mod = import_proto(proto)
    except Exception as exc:  # TVM reports unsupported operators with assorted error types
        from edgecam.compiler.node_errors import explain_import_failure

        raise explain_import_failure(proto, model.path, exc) from exc
    if params:
        arguments = len(mod["main"].params)
        if arguments != len(model.inputs) + len(params):
            raise ModelImportError(
                f"{model.path}: TVM's main takes {arguments} arguments, expected {len(model.inputs)} inputs "
                f"+ {len(params)} coded weights"
            )
        mod["main"] = mod["main"].with_attr("num_input", len(model.inputs))
    return mod


def import_proto(proto: Any) -> Any:
    """TVM's import of an ONNX model proto, weights bound as constants, every output of `main` a
    tensor: TVM returns what it computes as a shape (ONNX Shape, and ops folded into it) as a Relax
    shape value, which neither the runtime nor a KServe response can carry."""
    from tvm.relax.frontend.onnx import from_onnx

    return _shapes_as_tensors(from_onnx(proto, keep_params_in_input=False))


def _shapes_as_tensors(mod: Any) -> Any:
    """`mod` with each shape value that `main` returns (alone or in its output tuple) an int64 tensor."""
    from tvm import relax

    main = mod["main"]
    body = main.body
    if not isinstance(body, relax.SeqExpr):
        return mod
    builder = relax.BlockBuilder()
    bindings: list[Any] = []

    def tensor(expr: Any) -> Any:
        if not isinstance(expr.ty, relax.ShapeType):
            return expr
        value = builder.normalize(relax.op.shape_to_tensor(expr))
        var = relax.Var(f"shape_out{len(bindings)}", value.ty)
        bindings.append(relax.VarBinding(var, value))
        return var

    result = body.body
    if isinstance(result, relax.Tuple):
        fields = [tensor(field) for field in result.fields]
        result = relax.Tuple(fields) if bindings else result
    else:
        result = tensor(result)
    if not bindings:
        return mod
    seq = relax.SeqExpr([*body.blocks, relax.BindingBlock(bindings)], result)
    out = mod.clone()
    out["main"] = relax.Function(main.params, seq, builder.normalize(result).ty, main.is_pure, main.attrs)
    return out


def _initializers_as_inputs(model: OnnxModel, names: Sequence[str]) -> Any:
    """A copy of the model whose initializers `names` are graph inputs instead, appended in that order."""
    import onnx
    from onnx import helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    missing = [name for name in names if name not in initializers]
    if missing:
        raise ModelImportError(
            f"{model.path}: coded weights {missing} are not initializers of the model; "
            f"initializers: {sorted(initializers)}"
        )
    chosen = set(names)
    keep = [init for init in graph.initializer if init.name not in chosen]
    inputs = [value for value in graph.input if value.name not in chosen]  # IR < 4 lists them as inputs too
    del graph.initializer[:], graph.input[:]
    graph.initializer.extend(keep)
    graph.input.extend(inputs)
    for name in names:
        init = initializers[name]
        graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    return proto
