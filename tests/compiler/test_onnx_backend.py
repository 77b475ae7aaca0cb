"""A fixed sample of ONNX's backend test cases (bench/bench_onnx_backend.py runs them all): each is
compiled by edgecam for x86_64 and by plain TVM and compared with onnx's expected outputs; edgecam
must pass wherever plain TVM does, and on these it does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

# Operators of camera networks and the cases that once failed edgecam only: Dropout (tuple result),
# Sum, Einsum, Expand to a runtime shape, Range, Shape, Slice with run-time starts; a DequantizeLinear
# ONNX Runtime cannot run; Split with several outputs.
NODE_CASES = [
    "test_add", "test_averagepool_2d_default", "test_batchnorm_epsilon", "test_clip",
    "test_concat_2d_axis_1", "test_conv_with_strides_padding", "test_convtranspose",
    "test_depthtospace_example", "test_dropout_default_mask", "test_dropout_default_old",
    "test_einsum_transpose", "test_expand_dim_unchanged", "test_gather_0",
    "test_gemm_default_single_elem_vector_bias", "test_globalaveragepool", "test_hardswish",
    "test_instancenorm_example", "test_maxpool_2d_default", "test_prelu_broadcast",
    "test_range_float_type_positive_delta", "test_shape", "test_softmax_axis_1",
    "test_split_equal_parts_2d", "test_sum_example", "test_where_example", "test_dequantizelinear_axis",
    "test_slice",
]  # fmt: skip


@pytest.fixture(scope="module")
def backend() -> Any:
    sys.path.insert(0, str(BENCH))  # the bench scripts import each other as top-level modules
    try:
        import onnx_backend_cases

        yield onnx_backend_cases
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def node_cases(backend: Any) -> dict[str, Path]:
    return {case.name: case for case in backend.cases("node")}


@pytest.mark.parametrize("name", NODE_CASES)
def test_edgecam_passes_the_node_case(name: str, backend: Any, node_cases: dict[str, Path]) -> None:
    row = backend.run_case(node_cases[name])
    assert row["status"] == "passed", row
    assert row["edgecam"] == "pass"


def test_a_whole_network_compiles_to_an_artifact_and_matches(backend: Any) -> None:
    """SqueezeNet (opset 9: fire modules, Dropout) through compile_model, the artifact and the
    server's runtime, against onnx's expected output."""
    row = backend.run_case(backend.data_dir() / "light" / "light_squeezenet.onnx")
    assert (row["edgecam"], row["path"]) == ("pass", "artifact"), row
