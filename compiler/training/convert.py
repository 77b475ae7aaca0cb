"""ONNX ↔ torch for training passes: onnx2torch in, `torch.onnx.export` (TorchScript) out.

The round trip keeps what the rest of the compiler keys on: node names of single-op layers (recipes
select layers by them, e.g. "/14/Conv"), initializer names where a layer's tensor keeps its shape,
and every metadata_prop (edgecam.preprocessing, labels, ...). An export is run under ONNX Runtime and
compared with the torch model before it is returned, so a pass never hands on a graph that computes
something else than what was trained.
"""

from __future__ import annotations

import io
import sys
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecam.compiler.errors import TrainingError

if TYPE_CHECKING:
    import onnx
    import torch

# Exported outputs may differ from torch's by float reassociation only: 1e-4 of each output's
# largest |value| is the bound compile verification uses for float models too.
EXPORT_TOLERANCE = 1e-4
_TORCHVISION_OPS = "NonMaxSuppression/RoiAlign need a working torchvision"


def _import_onnx2torch() -> Any:
    """onnx2torch imports torchvision in its NonMaxSuppression and RoiAlign converters only, but
    `import onnx2torch` loads every converter. PyPI's torchvision cannot load with the CPU torch
    (its _C.so needs libtorch_cuda.so), so when it fails a stand-in module takes its place whose
    functions refuse by name: those two ops cannot train, every other op converts."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # RuntimeError "operator torchvision::nms does not exist", or ImportError
        for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        stand_in, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise TrainingError(f"{_TORCHVISION_OPS}; install a torchvision that loads with this torch")

        def attribute(name: str) -> Any:
            if name.startswith("__"):  # hasattr/inspect probes must see an ordinary module
                raise AttributeError(name)
            return refuse

        ops.__getattr__ = attribute  # type: ignore[method-assign]
        stand_in.ops = ops  # type: ignore[attr-defined]
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, ops
    import onnx2torch

    return onnx2torch


@dataclass
class TorchModel:
    """A converted model: the torch module and the ONNX node name behind each of its submodules."""

    module: torch.nn.Module
    source: onnx.ModelProto
    node_of_module: dict[str, str]

    def module_of(self, node_name: str) -> torch.nn.Module | None:
        """The submodule computing ONNX node `node_name` (None when there is none of its own)."""
        for module_name, node in self.node_of_module.items():
            if node == node_name:
                return self.module.get_submodule(module_name)
        return None


def to_torch(model: onnx.ModelProto) -> TorchModel:
    """Convert for training; TrainingError naming the node and op onnx2torch has no converter for,
    or saying that the graph cannot take a batch (a Reshape fixed to batch 1)."""
    import torch

    onnx2torch = _import_onnx2torch()
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph

    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    for node in model.graph.node:
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        try:
            get_converter(node.op_type, opsets.get(domain, opsets.get("", 0)), domain)
        except NotImplementedError:
            raise TrainingError(
                f"onnx2torch cannot convert op {node.op_type!r} (opset {opsets.get(domain)}) of node "
                f"{node.name or node.output[0]!r}; a training pass needs a model without it"
            ) from None
    try:
        module = onnx2torch.convert(model)
    except Exception as exc:  # onnx2torch raises bare NotImplementedError/ValueError with attributes
        raise TrainingError(f"onnx2torch cannot convert the model: {exc}") from exc
    # onnx2torch names each submodule by its node's unique name, in graph order.
    names = [unique for unique, _ in OnnxGraph(model.graph).nodes.items()]
    node_of_module = {
        unique: node.name or node.output[0] for unique, node in zip(names, model.graph.node, strict=True)
    }
    shape = [d.dim_value for d in _graph_inputs(model)[0].type.tensor_type.shape.dim]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros([2, *shape[1:]]))
    except Exception as exc:
        raise TrainingError(
            f"the model does not run on a batch of 2 inputs {[2, *shape[1:]]} after conversion ({exc}); "
            "training needs batches: export the model with Flatten instead of a Reshape fixed to batch 1"
        ) from exc
    return TorchModel(module, model, node_of_module)


def to_onnx(converted: TorchModel, check_inputs: np.ndarray) -> onnx.ModelProto:
    """Export `converted.module` with the source model's input/output names, opset and metadata, and
    check it against the module under ONNX Runtime on `check_inputs` (a batch of real inputs)."""
    import onnx
    import torch

    source, module = converted.source, converted.module.eval()
    opset = next((e.version for e in source.opset_import if e.domain in ("", "ai.onnx")), 17)
    buffer = io.BytesIO()
    sample = torch.from_numpy(np.ascontiguousarray(check_inputs[:1], dtype=np.float32))
    torch.onnx.export(
        module,
        (sample,),
        buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
        input_names=[value.name for value in _graph_inputs(source)],
        output_names=[value.name for value in source.graph.output],
        opset_version=min(max(opset, 13), 20),  # the TorchScript exporter's range
        dynamo=False,  # the dynamo exporter needs onnxscript
        do_constant_folding=True,
    )
    exported = onnx.load_from_string(buffer.getvalue())
    _restore_names(exported, converted)
    del exported.metadata_props[:]
    for prop in source.metadata_props:
        exported.metadata_props.add(key=prop.key, value=prop.value)
    onnx.checker.check_model(exported)
    check_export(exported, module, check_inputs)
    return exported


def check_export(exported: onnx.ModelProto, module: torch.nn.Module, inputs: np.ndarray) -> None:
    """TrainingError unless ONNX Runtime's outputs of `exported` match `module`'s on every input."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)))
    expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    for row in range(len(inputs)):
        got = session.run(None, {name: inputs[row : row + 1].astype(np.float32)})
        for index, (value, reference) in enumerate(zip(got, expected_list, strict=True)):
            ref = reference[row : row + 1].numpy()
            bound = EXPORT_TOLERANCE * max(float(np.abs(ref).max(initial=0.0)), 1e-12)
            diff = float(np.abs(value - ref).max(initial=0.0))
            if not diff <= bound:
                raise TrainingError(
                    f"the ONNX export differs from the trained torch model on output "
                    f"{session.get_outputs()[index].name!r} by {diff:.3g} (bound {bound:.3g}) on input "
                    f"{row}; the model uses an op the TorchScript exporter does not reproduce"
                )


def _restore_names(exported: onnx.ModelProto, converted: TorchModel) -> None:
    """Give single-op layers back their source node names, and their tensors the source initializer
    names when the shape is unchanged (the exporter names them after the torch module)."""
    from onnx import numpy_helper

    source_nodes = {node.name or node.output[0]: node for node in converted.source.graph.node}
    source_inits = {init.name: init for init in converted.source.graph.initializer}
    exported_inits = {init.name: init for init in exported.graph.initializer}
    scopes: dict[str, list[Any]] = {}
    for node in exported.graph.node:
        scopes.setdefault(node.name.rsplit("/", 1)[0].lstrip("/"), []).append(node)
    taken = {node.name for node in exported.graph.node} | set(exported_inits)
    renames: dict[str, str] = {}
    for module_name, node_name in converted.node_of_module.items():
        nodes, original = scopes.get(module_name, []), source_nodes[node_name]
        if len(nodes) != 1 or nodes[0].op_type != original.op_type:
            continue
        if node_name not in taken:
            nodes[0].name = node_name
        for new, old in zip(nodes[0].input, original.input, strict=False):
            if new in exported_inits and old in source_inits and old not in taken and new not in renames:
                same = numpy_helper.to_array(exported_inits[new]).shape == tuple(source_inits[old].dims)
                if same:
                    renames[new] = old
                    taken.add(old)
    for init in exported.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in exported.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]


def _graph_inputs(model: onnx.ModelProto) -> list[Any]:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]
