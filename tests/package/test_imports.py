"""Every module imports on its own, and the compiled core is used when it is there.

Each module is imported in a fresh `python -I -W error` (multidict's
test_circular_imports): a circular import or a warning at import time fails here even
when the test process happens to import modules in a forgiving order.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
from pathlib import Path

import pytest

import fastpool
import fastpool._py
from fastpool import _pick_core

MODULES = ["fastpool"] + sorted(
    f"fastpool.{m.name}" for m in pkgutil.iter_modules(fastpool.__path__)
) + sorted(f"fastpool._py.{m.name}" for m in pkgutil.iter_modules(fastpool._py.__path__))
NO_EXTENSIONS = bool(os.environ.get("FASTPOOL_NO_EXTENSIONS"))
HAS_NATIVE = importlib.util.find_spec("fastpool._core") is not None


def test_module_list_is_complete():
    # Guards the parametrization below against an empty or partial package path.
    for name in ("fastpool._pick_core", "fastpool._py", "fastpool._py.ledger",
                 "fastpool._future", "fastpool.executor"):
        assert name in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_import_alone(run_py, module):
    proc = run_py(f"import {module}", flags=("-W", "error"), timeout=60)
    assert proc.returncode == 0, proc
    assert proc.stderr == "", proc


@pytest.mark.parametrize("module", ["fastpool", "fastpool.executor"])
def test_import_alone_without_extensions(run_py, module):
    proc = run_py(f"import {module}; import fastpool; assert not fastpool.NATIVE",
                  flags=("-W", "error"), env={"FASTPOOL_NO_EXTENSIONS": "1"})
    assert proc.returncode == 0, proc


def test_native_core_loaded():
    # yarl's test_quoting_c_loaded: a compiled core next to the package must be used
    # (unless explicitly disabled); otherwise a broken build silently tests the fallback.
    if NO_EXTENSIONS:
        assert fastpool.NATIVE is False
        assert _pick_core.core.__name__ == "fastpool._py"
    elif HAS_NATIVE:
        assert fastpool.NATIVE is True
        assert _pick_core.core.__name__ == "fastpool._core"
        assert fastpool.ThreadPoolExecutor(1)._work_queue.__class__.__module__ == "fastpool._core"
    else:
        assert fastpool.NATIVE is False
        assert not os.environ.get("FASTPOOL_REQUIRE_NATIVE"), "no compiled core was built"


def test_native_flag_follows_environment(run_py):
    code = "import fastpool, fastpool._pick_core as c; print(fastpool.NATIVE, c.core.__name__)"
    proc = run_py(code, env={"FASTPOOL_NO_EXTENSIONS": "1"})
    assert proc.returncode == 0, proc
    assert proc.stdout.split() == ["False", "fastpool._py"]
    env = dict(os.environ)
    env.pop("FASTPOOL_NO_EXTENSIONS", None)
    proc = run_py(code, env={"FASTPOOL_NO_EXTENSIONS": ""})
    assert proc.returncode == 0, proc
    expected = ["True", "fastpool._core"] if HAS_NATIVE else ["False", "fastpool._py"]
    assert proc.stdout.split() == expected


def test_require_native_fails_the_session(run_py, tmp_path):
    # The conftest guard: FASTPOOL_REQUIRE_NATIVE=1 with the fallback in use stops pytest.
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    code = (
        "import pytest\n"
        f"sys.exit(pytest.main([{str(tmp_path)!r}, '-q', '-p', 'no:cacheprovider']))\n"
    )
    proc = run_py(code, env={"FASTPOOL_NO_EXTENSIONS": "1", "FASTPOOL_REQUIRE_NATIVE": "1"})
    assert proc.returncode == 1, proc
    assert "FASTPOOL_REQUIRE_NATIVE=1 but fastpool.NATIVE is False" in proc.stdout + proc.stderr
    assert "1 passed" not in proc.stdout, proc
