from __future__ import annotations

import subprocess
import sys

import prompttune.search as search


def test_search_never_imports_grpc_protobuf_or_other_portions() -> None:
    code = (
        "import sys, prompttune.search; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'google') "
        "or m.startswith(('prompttune.v1', 'prompttune.server', 'prompttune.client'))]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_is_listed_in_all() -> None:
    assert sorted(search.__all__) == sorted(set(search.__all__))
    assert all(hasattr(search, name) for name in search.__all__)
    assert not hasattr(search, "__file__") or search.__file__.endswith("__init__.py")
