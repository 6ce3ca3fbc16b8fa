"""Dependency direction: search imports no gRPC layer; the client imports no engine or server.

Scans every .py file under the source roots with ``ast``, so imports inside functions and
``TYPE_CHECKING`` blocks count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "search": (
        "grpc",
        "google.protobuf",
        "prompttune.v1",
        "prompttune.contract.wire",
        "prompttune.server",
        "prompttune.client",
    ),
    "client": (
        "prompttune.search",
        "prompttune.server",
        "optuna",
        "torch",
        "openai",
        "sentence_transformers",
        "numpy",
        "structlog",
        "sqlalchemy",
    ),
}


def imported_modules(tree: ast.AST) -> Iterator[str]:
    """Absolute module names a file imports; ``from a import b`` yields ``a`` and ``a.b``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# The contract is shared by everyone, so it imports no one; only its wire codec sees protobuf.
CONTRACT_FORBIDDEN = (
    "grpc",
    "google.protobuf",
    "prompttune.v1",
    "prompttune.client",
    "prompttune.search",
    "prompttune.server",
    "optuna",
    "numpy",
    "yaml",
)


def test_contract_imports_nothing_but_the_standard_library() -> None:
    package = ROOT / "proto" / "prompttune" / "contract"
    found = []
    for path in sorted(package.rglob("*.py")):
        allowed = ("google.protobuf", "prompttune.v1") if path.name == "wire.py" else ()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module in imported_modules(tree):
            banned = [b for b in CONTRACT_FORBIDDEN if _is_within(module, b)]
            if banned and not any(_is_within(module, a) for a in allowed):
                found.append(f"{path.name}: {module}")
    assert found == []


def violations(source_root: str) -> list[str]:
    found = []
    for path in sorted((ROOT / source_root).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module in imported_modules(tree):
            if any(_is_within(module, banned) for banned in FORBIDDEN[source_root]):
                found.append(f"{path.relative_to(ROOT)}: {module}")
    return found


@pytest.mark.parametrize("source_root", sorted(FORBIDDEN))
def test_source_root_respects_dependency_direction(source_root: str) -> None:
    assert list((ROOT / source_root).rglob("*.py")), f"no sources under {source_root}/"
    assert violations(source_root) == []


def test_scanner_sees_nested_and_from_imports() -> None:
    tree = ast.parse("def f():\n    from prompttune import server\n    import numpy.linalg\n")

    modules = set(imported_modules(tree))

    assert {"prompttune.server", "numpy.linalg"} <= modules
