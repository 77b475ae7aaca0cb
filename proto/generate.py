"""Regenerate the checked-in protobuf/gRPC Python code: `python -m edgecam.proto.generate`.

The .proto files are staged under `edgecam/proto/` before protoc runs, so the generated modules
import each other as `edgecam.proto...` (protoc derives import paths from file paths).
`tests/proto/test_generated.py` regenerates into a temporary folder and fails when the checked-in
code differs, so edit the .proto files, never the *_pb2 files.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("inference/grpc_service.proto", "v1/cameras.proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules for every PROTO_FILES entry under out_dir (same relative folders)."""
    from grpc_tools import protoc  # dev-only dependency

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "src"
        built = Path(tmp) / "out"
        built.mkdir()
        for rel in PROTO_FILES:
            dest = staged / "edgecam" / "proto" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PROTO_DIR / rel, dest)
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{staged}",
            f"-I{include}",
            f"--python_out={built}",
            f"--pyi_out={built}",
            f"--grpc_python_out={built}",
            *(f"edgecam/proto/{rel}" for rel in PROTO_FILES),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        written = []
        for path in sorted((built / "edgecam" / "proto").rglob("*")):
            if path.name.endswith(GENERATED_SUFFIXES):
                rel_path = path.relative_to(built / "edgecam" / "proto")
                target = out_dir / rel_path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                written.append(target)
        return written


def main() -> None:
    for path in generate(PROTO_DIR):
        print(f"wrote {path.relative_to(PROTO_DIR.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
