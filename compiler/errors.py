"""Compiler errors: each message names what was received and what to do instead."""

from __future__ import annotations


class CompilerError(Exception):
    """Base class; the CLI prints these without a traceback and exits 2."""


class UnknownTargetError(CompilerError):
    """A target name, target option name or CPU name that does not exist; the message lists valid ones."""


class InvalidOptionError(CompilerError):
    """An option with a value it cannot take (tolerance < 0, num_cores 0, ...)."""


class ModelImportError(CompilerError):
    """The model cannot be read, lacks what the compiler needs, or TVM cannot import it."""


class BuildError(CompilerError):
    """TVM imported the model but could not lower, compile or export it for the target."""


class NodeBuildError(BuildError):
    """A build (or import) failure traced to one ONNX node: which one, with what inputs, what it
    imports as, and whether it builds without edgecam's rewrites (compiler/node_errors.py)."""

    def __init__(
        self,
        message: str,
        *,
        node_name: str,
        op_type: str,
        opset: int,
        input_shapes: dict[str, list[int] | None],
        relax_ops: list[str],
        culprit: str,
        cause: str,
    ) -> None:
        super().__init__(message)
        self.node_name = node_name
        self.op_type = op_type
        self.opset = opset
        self.input_shapes = input_shapes  # None: a shape ONNX shape inference could not tell
        self.relax_ops = relax_ops
        # What fails: "channels_last" (the node builds without that rewrite), "edgecam" (plain TVM
        # builds it), "tvm" (plain TVM fails too) or "unknown" (not narrowed down).
        self.culprit = culprit
        self.cause = cause  # the last line of TVM's own message


class VerificationError(CompilerError):
    """The compiled model disagrees with ONNX Runtime beyond the tolerance; nothing was written."""


class EmulatorError(CompilerError):
    """A cross-compiled library could not be run under emulation (qemu-user) to verify it; the message
    names what to install or what failed."""


class RecipeError(CompilerError):
    """A recipe (or one pass config in it) that is invalid; the message names the field and the choices."""


class PassError(CompilerError):
    """A pass that cannot apply to a layer of this model; the message names the layer and why."""


class AccuracyGateError(CompilerError):
    """The compressed model lost more accuracy than the recipe allows; no artifact was written."""


class TrainingError(CompilerError):
    """A training pass cannot run: a model onnx2torch cannot convert (names the op), an export that
    disagrees with its torch model, or a checkpoint that cannot be read (names the file)."""
