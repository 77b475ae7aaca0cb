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
