"""The checked-in generated code matches the .proto files, and the OIP messages match Triton's."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgecam.proto import generate

pytest.importorskip("grpc_tools")

PROTO_DIR = Path(generate.__file__).parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh = generate.generate(tmp_path)
    assert fresh, "protoc produced nothing"
    stale = [
        str(path.relative_to(tmp_path))
        for path in fresh
        if (PROTO_DIR / path.relative_to(tmp_path)).read_bytes() != path.read_bytes()
    ]
    assert not stale, f"generated code is stale, run `python -m edgecam.proto.generate`: {stale}"


_DUMP = r"""
import json, sys, importlib
module = importlib.import_module(sys.argv[1])
def fields(d):
    out = {}
    for f in d.fields:
        out[f.name] = [f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else "",
                       f.containing_oneof.name if f.containing_oneof else ""]
    for n in d.nested_types:
        out["." + n.name] = fields(n)
    return out
fd = module.DESCRIPTOR
svc = fd.services_by_name["GRPCInferenceService"]
print(json.dumps({
    "messages": {name: fields(m) for name, m in fd.message_types_by_name.items()},
    "methods": {m.name: [m.input_type.full_name, m.output_type.full_name,
                         m.client_streaming, m.server_streaming] for m in svc.methods},
}))
"""


def _assert_subset(ours: dict, theirs: dict, where: str) -> None:
    """Every field we define is Triton's field (number, type, label); we may leave some out."""
    for key, value in ours.items():
        assert key in theirs, f"{where}.{key} is not in Triton's definition"
        if key.startswith("."):
            _assert_subset(value, theirs[key], f"{where}{key}")
        else:
            assert value == theirs[key], f"{where}.{key} differs from Triton's: {value} != {theirs[key]}"


def _describe(module: str) -> dict:
    # Separate processes: both files define `inference.*` in protobuf's default pool.
    out = subprocess.run(
        [sys.executable, "-c", _DUMP, module], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="needs tritonclient[grpc]")
def test_inference_protocol_matches_triton() -> None:
    ours = _describe("edgecam.proto.inference.grpc_service_pb2")
    triton = _describe("tritonclient.grpc.service_pb2")
    assert ours["messages"], "no messages found"
    for name, fields in ours["messages"].items():
        assert name in triton["messages"], f"{name} is not an OIP/Triton message"
        _assert_subset(fields, triton["messages"][name], name)
    for method, signature in ours["methods"].items():
        assert signature == triton["methods"][method], f"rpc {method} differs from Triton's"
    required = {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
    }
    assert required <= set(ours["methods"])
