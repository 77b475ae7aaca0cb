"""Compiler errors: each message names what was received and what to do instead."""

from __future__ import annotations


class CompilerError(Exception):
    """Base class; the CLI prints these without a traceback and exits 2."""


class UnknownTargetError(CompilerError):
    pass


class ModelImportError(CompilerError):
    pass


class VerificationError(CompilerError):
    """The compiled model disagrees with ONNX Runtime beyond the tolerance; nothing was written."""
