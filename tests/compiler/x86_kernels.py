"""What the CPU schedule tests look at: a model built for x86-64-v3 (AVX2: 8 float lanes, 12
accumulator registers), and the scheduled TIR of one of its kernels, from one of three starting
points:

- "prepared": as `build` prepares it (channels-last, float convs and dense layers as packed GEMMs);
- "channels_last": the layout rewrite alone, so RegisterTiles schedules the convs, as it does the
  convs no packed GEMM takes (int8 ones on CPUs without VNNI, grouped ones);
- "imported": as the ONNX importer made it (NCHW).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from edgecam.compiler.targets.base import Target, create_target


def x86() -> Target:
    return create_target("x86_64", mcpu="x86-64-v3")


def relax_module(path: Path, start: str = "prepared") -> Any:
    from tvm.relax.frontend.onnx import from_onnx

    module = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    if start == "prepared":
        return x86().prepare(module)
    if start == "channels_last":
        from edgecam.compiler.lowering.channels_last import to_channels_last

        return to_channels_last(module)
    return module


def kernel(path: Path, name: str, start: str = "prepared") -> str:
    """The scheduled TIR of the kernel whose name contains `name`."""
    target = x86()
    tvm_target = target.tvm_target()
    with tvm_target:
        module = target.pipeline(tvm_target)(relax_module(path, start))
    [script] = [f.script() for gv, f in module.functions.items() if name in gv.name_hint]
    return str(script)


def build(path: Path, start: str = "prepared") -> Any:
    """The executable, built with the target's pipeline from `start`."""
    import tvm

    target = x86()
    tvm_target = target.tvm_target()
    with tvm_target:
        return tvm.compile(
            relax_module(path, start), target=tvm_target, relax_pipeline=target.pipeline(tvm_target)
        )
