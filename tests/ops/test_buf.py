"""The wire API's checks: buf lint, the breaking-change check against the previous release's
proto (proto/baseline/a58f1f1.binpb), and code generation for another language."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.ops.conftest import ROOT

BUF = ROOT / "clients" / "node" / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "proto" / "baseline" / "a58f1f1.binpb"
PROTO = Path("prompttune") / "v1" / "optimizer.proto"


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "buf comes from npm @bufbuild/buf: run make node-deps"
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_lint_and_breaking_check_pass() -> None:
    lint = buf("lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    breaking = buf("breaking", "--against", str(BASELINE))
    assert breaking.returncode == 0, breaking.stdout + breaking.stderr


def test_breaking_check_catches_a_removed_field(tmp_path: Path) -> None:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    changed = tmp_path / "proto" / PROTO
    changed.parent.mkdir(parents=True)
    text = (ROOT / "proto" / PROTO).read_text()
    assert "  string request_id = 12;\n" in text
    changed.write_text(text.replace("  string request_id = 12;\n", ""))
    breaking = buf("breaking", "--against", str(BASELINE), cwd=tmp_path)
    assert breaking.returncode != 0
    assert '"12" with name "request_id" on message "Job" was deleted' in breaking.stdout


def test_generates_typescript_from_the_proto(tmp_path: Path) -> None:
    generated = buf("generate", "-o", str(tmp_path))
    assert generated.returncode == 0, generated.stdout + generated.stderr
    code = (tmp_path / "gen" / "es" / "prompttune" / "v1" / "optimizer_pb.ts").read_text()
    assert "export const OptimizerService" in code and "CreateJobRequest" in code
