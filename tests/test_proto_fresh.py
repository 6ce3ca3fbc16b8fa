"""The checked-in generated code matches optimizer.proto (run `make proto` when this fails)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = (
    "optimizer_pb2.py",
    "optimizer_pb2.pyi",
    "optimizer_pb2_grpc.py",
    "optimizer_pb2_grpc.pyi",
)


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    proto_root = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", proto_root, ignore=shutil.ignore_patterns("*_pb2*"))
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(proto_root),
            f"--python_out={proto_root}", f"--grpc_python_out={proto_root}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={proto_root}", f"--mypy_grpc_out={proto_root}",
            str(proto_root / "prompttune" / "v1" / "optimizer.proto"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    for name in GENERATED:
        fresh = (proto_root / "prompttune" / "v1" / name).read_text()
        checked_in = (ROOT / "proto" / "prompttune" / "v1" / name).read_text()
        assert fresh == checked_in, f"{name} is stale: run `make proto`"
