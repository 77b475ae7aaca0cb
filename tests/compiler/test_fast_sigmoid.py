"""Sigmoids through TOPI's vectorizable exp on CPUs (compiler/lowering/fast_sigmoid.py): the rewrite
takes the SiLU's sigmoid, the built kernel calls no scalar expf, and the values stay within a few
float32 ulps of the exact sigmoid over the whole float range."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from convnets import save_graph
from onnx import helper, numpy_helper
from x86_kernels import relax_module, x86

from edgecam.compiler.lowering.fast_sigmoid import NAME, fast_sigmoids, sigmoid


def _silu_conv(path: Path) -> Path:
    """conv 1×1 → SiLU as PyTorch exports it (Sigmoid, Mul): EfficientNet's every conv."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b"),
    ]
    return save_graph(path, nodes, [1, 16, 14, 14], [1, 32, 14, 14], inits)


def test_a_silus_sigmoid_becomes_the_fast_compute_fused_into_the_conv(tmp_path: Path) -> None:
    text = str(relax_module(_silu_conv(tmp_path / "silu.onnx"))["main"].script())
    assert "R.sigmoid(" not in text and f"R.call_tir({NAME}," in text


def _assembly(module: Any) -> str:
    import tvm

    target = x86()
    tvm_target = target.tvm_target()
    with tvm_target:
        executable = tvm.compile(module, target=tvm_target, relax_pipeline=target.pipeline(tvm_target))
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports)


def test_the_built_kernel_calls_no_scalar_exp(tmp_path: Path) -> None:
    path = _silu_conv(tmp_path / "silu.onnx")
    # Without the rewrite TVM's sigmoid is libm's expf per lane: the check below can see that.
    from edgecam.compiler.lowering.channels_last import to_channels_last

    plain = relax_module(path, "imported")
    assert "expf" in _assembly(to_channels_last(plain))
    assert "expf" not in _assembly(fast_sigmoids(to_channels_last(plain))[0])
    assert "expf" not in _assembly(relax_module(path))  # as the build prepares it


def test_fast_sigmoid_is_within_a_few_ulps_over_the_float_range() -> None:
    import tvm
    from tvm import te

    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 88.5, -88.5, 103.0, -103.0, 3.4e38, -3.4e38]
    values = np.concatenate([np.linspace(-120, 120, 100_001), special]).astype(np.float32)
    x = te.placeholder(values.shape, "float32")
    kernel = tvm.tirx.build(te.create_prim_func([x, sigmoid(x)]), target=x86().tvm_target())
    out = tvm.runtime.tensor(np.zeros_like(values))
    kernel(tvm.runtime.tensor(values), out)
    got = out.numpy()
    with np.errstate(over="ignore"):
        exact = 1.0 / (1.0 + np.exp(-values.astype(np.float64)))
    np.testing.assert_array_equal(got[-len(special) :][:5], [0.5, 0.5, 1.0, 0.0, np.nan])
    exact[np.isnan(values)] = got[np.isnan(values)] = 0.0
    assert np.abs(got - exact).max() < 1e-7
    normal = exact > np.finfo(np.float32).tiny
    ulps = np.abs(got - exact)[normal] / np.spacing(exact[normal].astype(np.float32))
    assert ulps.max() <= 8, f"{ulps.max():.1f} ulps"
