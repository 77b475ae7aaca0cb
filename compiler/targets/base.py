"""The Target plug-in contract, after TVM's per-target `relax/backend/<target>/pipeline.py` modules.

A target turns options into a `tvm.target.Target`, builds a Relax module into an exported library,
says what a host needs to run it (`TargetInfo` in the manifest), and how this machine can run it
for verification (`library_runner`: natively, under an emulator, or not at all).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecam.compiler.artifact import TargetInfo
from edgecam.compiler.errors import InvalidOptionError, UnknownTargetError

if TYPE_CHECKING:
    from edgecam.compiler.lowering.packed_gemm import Dot


@dataclass(frozen=True)
class LibraryRunner:
    """How this machine executes a target's library: `run` takes verify.run_library's arguments
    (library, feeds, input names, params, transform) and returns each feed's outputs; `where` says
    how (the manifest's verification records it): "native", "qemu-aarch64 -cpu cortex-a53", ..."""

    where: str
    run: Callable[..., list[list[Any]]]


class TargetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not a silent default

    # The escape hatch when edgecam's channels-last rewrite breaks a model TVM builds as imported
    # (a build error names the node and says so): targets without the rewrite ignore it.
    channels_last: bool = Field(
        default=True, description="compute convolutions channels-last where the target does (CPUs)"
    )


class Target(abc.ABC):
    name: ClassVar[str]
    options_class: ClassVar[type[TargetOptions]] = TargetOptions
    # Whether `prepare` computes QDQ (int8) layers in integers (compiler/lowering/qdq_to_integer.py):
    # on for targets where the integer build is verified; elsewhere they stay float32 as imported.
    integer_qdq: ClassVar[bool] = False
    # Whether `prepare` converts convolutions to NHWC/HWIO: on for CPUs, whose schedules vectorize
    # along the output channels (compiler/lowering/channels_last.py).
    channels_last: ClassVar[bool] = False
    # Whether integer layers go channels-last too (where `channels_last`): on x86 and aarch64, whose
    # int8 convs and dense layers are then packed GEMMs of the CPU's dot steps (`int8_dots`).
    integer_channels_last: ClassVar[bool] = False

    def __init__(self, options: TargetOptions | None = None) -> None:
        self.options = options or self.options_class()
        self.database: Path | None = None  # a tuning database to replay (compiler/tuning.py)

    @abc.abstractmethod
    def tvm_target(self) -> Any:
        """The tvm.target.Target (built from a dict: TVM 0.27 rejects the old strings)."""

    @abc.abstractmethod
    def info(self) -> TargetInfo:
        """What the manifest records: plain name, TVM target, arch and CPU features a host needs."""

    def pipeline(self, target: Any) -> Any:
        """The Relax pass pipeline `tvm.compile` runs for `target`: the tuned schedules of `database`
        when one is set (compiler/tuning.py), else `default_pipeline`."""
        if self.database is not None:
            from edgecam.compiler.targets import cpu_schedules
            from edgecam.compiler.tuning import replay_pipeline

            # Kernels the database has no record of get the untuned schedule, as without a database.
            rest = cpu_schedules.schedule_passes() if target.kind.name == "llvm" else []
            return replay_pipeline(target, self.database, schedule_rest=rest)
        return self.default_pipeline(target)

    def default_pipeline(self, target: Any) -> Any:
        """The untuned pipeline: on CPUs (LLVM) TVM's default with edgecam's ParallelRows schedule
        (compiler/targets/cpu_schedules.py), else TVM's default for the target kind."""
        from tvm import relax

        if target.kind.name == "llvm":
            from edgecam.compiler.targets import cpu_schedules

            return cpu_schedules.default_pipeline(target)
        return relax.get_default_pipeline(target)

    def prepare(self, mod: Any) -> Any:
        """Rewrites of the imported module before `pipeline`: what `build` compiles and what tuning
        must extract its tasks from (the workloads then match). QDQ layers become integer ones where
        `integer_qdq` (compiler/lowering/qdq_to_integer.py); convolutions go channels-last where
        `channels_last` (compiler/lowering/channels_last.py) and the options do not turn it off; on
        CPUs (LLVM) sigmoids compute through a vectorizable exp (compiler/lowering/fast_sigmoid.py)."""
        from edgecam.compiler.lowering.qdq_to_integer import fold_qdq, has_qdq

        integer = self.integer_qdq and has_qdq(mod)
        if integer:
            mod = fold_qdq(mod)[0]
        target = self.tvm_target()
        if self.channels_last and self.options.channels_last and (self.integer_channels_last or not integer):
            from edgecam.compiler.lowering.channels_last import to_channels_last
            from edgecam.compiler.lowering.packed_gemm import pack_gemms
            from edgecam.compiler.targets.cpu_tiles import vector_lanes

            mod = to_channels_last(mod)
            dots = self.int8_dots(target) if integer else ()
            mod = pack_gemms(mod, vector_lanes(target), dots)[0]
        if target.kind.name == "llvm":
            # After the layout rewrite, which moves relax.sigmoid but not the TE compute it becomes.
            from edgecam.compiler.lowering.fast_sigmoid import fast_sigmoids

            mod = fast_sigmoids(mod)[0]
        return mod

    def int8_dots(self, target: Any) -> tuple[Dot, ...]:
        """The integer dot-product steps this target's CPU (`target`: its TVM target) computes int8
        GEMMs with (compiler/lowering/packed_gemm.py), the fastest first, each registered with TVM as
        the tensor intrinsic it names; none: integer layers keep TOPI's compute and RegisterTiles' or
        ParallelRows' schedule."""
        return ()

    def build(self, mod: Any) -> Any:
        """Lower and compile a Relax module into an executable (`prepare`, then `pipeline`)."""
        import tvm

        target = self.tvm_target()
        mod = self.prepare(mod)
        with target:  # schedules and legalization consult Target.current()
            return tvm.compile(mod, target=target, relax_pipeline=self.pipeline(target))

    def export(self, executable: Any, directory: Path) -> str:
        """Write the library into `directory`; returns its file name."""
        name = "model.so"
        executable.export_library(str(directory / name))
        return name

    def runs_here(self) -> bool:
        """Whether this machine can execute the library (to verify it against ONNX Runtime)."""
        from edgecam.compiler.artifact import ArtifactError, check_host_can_run

        try:
            check_host_can_run(self.info())
        except ArtifactError:
            return False
        return True

    def library_runner(self) -> LibraryRunner | None:
        """How this machine runs the library to verify it against ONNX Runtime; None when it cannot."""
        if not self.runs_here():
            return None
        from edgecam.compiler import verify

        return LibraryRunner("native", verify.run_library)


_TARGETS: dict[str, type[Target]] = {}


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator: `--target NAME` finds the class by its `name`."""
    _TARGETS[cls.name] = cls
    return cls


def target_names() -> list[str]:
    """Every registered target name, sorted (what `--target` accepts)."""
    return sorted(_TARGETS)


def create_target(name: str, **options: Any) -> Target:
    """The target plug-in called `name`, configured with `options` (its options model's fields)."""
    try:
        cls = _TARGETS[name]
    except KeyError:
        raise UnknownTargetError(
            f"unknown target {name!r}; valid targets: {', '.join(target_names())}"
        ) from None
    unknown = set(options) - set(cls.options_class.model_fields)
    if unknown:
        raise UnknownTargetError(
            f"target {name!r} has no option {sorted(unknown)}; "
            f"its options: {sorted(cls.options_class.model_fields)}"
        )
    try:
        return cls(cls.options_class(**options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidOptionError(f"target {name!r}: invalid option value ({problems})") from None


def plain(value: Any) -> Any:
    """TVM FFI containers (Array, Map) → JSON-ready lists and dicts, for the manifest."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "__iter__"):
        return [plain(v) for v in value]
    return str(value)
