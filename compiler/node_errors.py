"""Which ONNX node a failed build comes from, and what the user can do about it.

TVM's ONNX importer keeps no link from a Relax op to the node it came from, and its check failures
name neither ("Expected nested to match tuple"). So `locate` asks the build itself: it builds
prefixes of the graph (the first k nodes, every value they leave unused an output, so none is
dropped as dead code) and bisects for the shortest one that fails; its last node is the culprit.
That takes about log2(nodes) builds of parts of the model, only after a build has failed, within
a time budget. The node is then built once more without edgecam's rewrites, to tell an edgecam
bug (the user can turn the rewrite off) from something TVM itself cannot build (another opset).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgecam.compiler.errors import BuildError, ModelImportError, NodeBuildError

if TYPE_CHECKING:
    from edgecam.compiler.targets.base import Target

log = logging.getLogger(__name__)

LOCATE_SECONDS = 300.0  # the most time spent narrowing a failure down before reporting it unlocated

# Build a model proto with TVM (raising whatever TVM raises), e.g. import + Target.build.
Build = Callable[[Any], None]


@dataclass(frozen=True)
class FailingNode:
    index: int  # in graph.node
    name: str
    op_type: str
    opset: int  # of the node's domain, as the model imports it
    input_shapes: dict[str, list[int] | None]
    relax_ops: list[str]  # the Relax ops the node imports as, most frequent first


def explain_build_failure(proto: Any, builder: Target, target: str, exc: BaseException) -> BuildError:
    """The error for a model whose build for `target` by `builder` raised `exc`: a NodeBuildError
    naming the node when one is found, else a BuildError with TVM's message cut to one line."""
    node = locate(proto, lambda part: builder.build(import_onnx(part)))
    if node is None:
        return BuildError(
            f"TVM could not build the model for {target}: {cause_of(exc)} (no single ONNX node builds "
            f"wrong on its own); {ADVICE['unknown']}"
        )
    return node_error(node, cause_of(exc), target, _culprit(prefix(proto, node.index + 1), builder))


def explain_import_failure(proto: Any, path: Any, exc: BaseException) -> ModelImportError:
    """The error for a model TVM's ONNX importer raised `exc` on, naming the node it fails at."""
    node = locate(proto, import_onnx)
    if node is None:
        return ModelImportError(f"TVM could not import {path}: {cause_of(exc)}")
    error = node_error(node, cause_of(exc), "any target", "tvm", step="import")
    return ModelImportError(str(error))


def import_onnx(proto: Any) -> Any:
    """The model's import as compile_model imports it (weights bound as constants)."""
    from edgecam.compiler.frontends.onnx import import_proto

    return import_proto(proto)


def _culprit(part: Any, builder: Target) -> str:
    """Which build of `part` (the model up to the failing node) fails: edgecam's without channels-last
    (where that was on), plain TVM's (`tvm.compile`, default pipeline)."""
    import tvm

    if builder.channels_last and builder.options.channels_last:
        without = type(builder)(builder.options.model_copy(update={"channels_last": False}))
        if _failure(lambda p: without.build(import_onnx(p)), part) is None:
            return "channels_last"
    target = builder.tvm_target()

    def plain(p: Any) -> None:
        with target:
            tvm.compile(import_onnx(p), target=target)

    return "edgecam" if _failure(plain, part) is None else "tvm"


def locate(proto: Any, build: Build, seconds: float = LOCATE_SECONDS) -> FailingNode | None:
    """The node whose prefix of `proto`'s graph is the shortest that `build` fails on; None when
    the prefixes all build (the failure needs the whole graph) or the time runs out. Constant nodes
    are never the answer (a prefix ending in one computes nothing); a graph with one other node
    needs no build to tell."""
    ends = [i + 1 for i, node in enumerate(proto.graph.node) if node.op_type != "Constant"]
    if len(ends) <= 1:
        return describe(proto, ends[0] - 1) if ends else None
    deadline = time.monotonic() + seconds
    known: dict[int, bool] = {}
    lo, hi = 0, len(ends) - 1  # indices into ends; invariant: prefix(ends[hi]) fails (the whole model did)

    def fails(j: int) -> bool | None:
        if time.monotonic() > deadline:
            return None
        if j not in known:
            known[j] = _failure(build, prefix(proto, ends[j])) is not None
        return known[j]

    while lo < hi:
        mid = (lo + hi) // 2
        verdict = fails(mid)
        if verdict is None:
            log.info("gave up locating the failing node after %.0f s", seconds)
            return None
        lo, hi = (lo, mid) if verdict else (mid + 1, hi)
    if not fails(hi):  # the whole graph fails, no prefix of it alone
        return None
    return describe(proto, ends[hi] - 1)


def describe(proto: Any, index: int) -> FailingNode:
    """Node `index` of `proto`'s graph: its name, op type, opset, input shapes and Relax ops."""
    node = proto.graph.node[index]
    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    shapes = _shapes(proto)
    return FailingNode(
        index=index,
        name=node.name or f"#{index} (unnamed)",
        op_type=node.op_type if not node.domain else f"{node.domain}.{node.op_type}",
        opset=int(opsets.get(node.domain or "", opsets.get("ai.onnx", 0))),
        input_shapes={name: shapes.get(name) for name in node.input if name},
        relax_ops=_relax_ops(proto, index),
    )


def node_error(
    node: FailingNode, cause: str, target: str, culprit: str, step: str = "build"
) -> NodeBuildError:
    """The error the user sees: the node, what TVM said (one line), and what to do. `culprit`: which
    build of the node alone failed (one of CULPRITS)."""
    shapes = node.input_shapes.items()
    inputs = ", ".join(f"{name}: {shape if shape is not None else '?'}" for name, shape in shapes)
    imported = ", ".join(node.relax_ops) or "nothing TVM could import"
    message = (
        f"TVM could not {step} ONNX node {node.name!r} ({node.op_type}, opset {node.opset}; "
        f"inputs {inputs or 'none'}; imported as {imported}) for {target}: {cause}. {ADVICE[culprit]}"
    )
    return NodeBuildError(
        message,
        node_name=node.name,
        op_type=node.op_type,
        opset=node.opset,
        input_shapes=node.input_shapes,
        relax_ops=node.relax_ops,
        culprit=culprit,
        cause=cause,
    )


_REPORT = "please report it to edgecam's maintainers with this message"
ADVICE = {
    "channels_last": "It builds without edgecam's channels-last rewrite, which is an edgecam bug: compile "
    f"with --no-channels-last (target option channels_last=false) and {_REPORT}",
    "edgecam": "Plain TVM builds this node but edgecam's rewrites or schedules do not, which is an "
    f"edgecam bug; {_REPORT}",
    "tvm": "TVM itself cannot handle this node: export the model at another opset or replace the operator, "
    "and report it to Apache TVM (https://github.com/apache/tvm/issues)",
    "unknown": f"Export the model at another opset or replace the operator; {_REPORT}",
}
CULPRITS = tuple(ADVICE)


def cause_of(exc: BaseException) -> str:
    """TVM's message cut to its last meaningful line (its C++ traces run to hundreds of lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1].rstrip(".:") if lines else type(exc).__name__


def prefix(proto: Any, k: int) -> Any:
    """A copy of `proto` with its first `k` nodes only; every value they compute that no later one of
    them reads (and every original output among them) is an output, so nothing is dead code."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    kept = list(graph.node)[:k]
    read = {name for node in kept for name in node.input}
    original = {value.name for value in proto.graph.output}
    # A Constant's value is no output of the prefix: TVM's importer folds it and refuses it as one.
    produced = [name for node in kept if node.op_type != "Constant" for name in node.output if name]
    outputs = [name for name in produced if name not in read or name in original]
    types = {value.name: value for value in (*_inferred(proto).graph.value_info, *proto.graph.output)}
    del graph.node[k:], graph.output[:]
    graph.output.extend(types.get(name, helper.make_empty_tensor_value_info(name)) for name in outputs)
    return out


def _failure(build: Build, proto: Any) -> BaseException | None:
    try:
        build(proto)
    except Exception as exc:  # TVM raises assorted types; any of them is a failure here
        return exc
    return None


_INFERRED: list[tuple[Any, Any]] = []  # [(model, its shape-inferred copy)]: the last model asked about


def _inferred(proto: Any) -> Any:
    """`proto` with ONNX shape inference's value_info (cached for the model at hand: every prefix asks)."""
    import onnx

    if not _INFERRED or _INFERRED[0][0] is not proto:
        try:
            inferred = onnx.shape_inference.infer_shapes(proto)
        except Exception:  # inference refuses some graphs; the shapes then stay unknown
            inferred = proto
        _INFERRED[:] = [(proto, inferred)]  # holding the model keeps `is` meaningful
    return _INFERRED[0][1]


def _shapes(proto: Any) -> dict[str, list[int] | None]:
    inferred = _inferred(proto)
    shapes: dict[str, list[int] | None] = {init.name: list(init.dims) for init in proto.graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            shapes[value.name] = dims if all(d >= 0 for d in dims) else None
    return shapes


def _relax_ops(proto: Any, index: int) -> list[str]:
    """The ops TVM imports node `index` as: those of prefix(index + 1) less those of prefix(index)."""
    first, rest = _op_counts(prefix(proto, index + 1)), _op_counts(prefix(proto, index))
    return [name for name, _ in (first - rest).most_common()]


def _op_counts(proto: Any) -> Counter[str]:
    from tvm import relax

    counts: Counter[str] = Counter()
    try:
        mod = import_onnx(proto)
    except Exception:  # the node does not even import: no ops to name
        return counts

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
            counts[str(expr.op.name)] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return counts
