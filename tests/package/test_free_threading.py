"""Free-threaded CPython (3.13t/3.14t): fastpool keeps the GIL off and idle workers park."""

from __future__ import annotations

import os
import sys
import sysconfig

import pytest

FREE_THREADED_BUILD = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.mark.skipif(not FREE_THREADED_BUILD, reason="needs a free-threaded build")
def test_importing_fastpool_leaves_the_gil_off(run_py):
    # An extension module not declared free-threading-safe re-enables the GIL on import
    # (with a RuntimeWarning): import everything fastpool has. run_py runs `python -I`,
    # which ignores PYTHON_GIL (so nothing forces the GIL off) and keeps a source checkout
    # from shadowing the installed package.
    code = ("import sys, fastpool, fastpool.pool, fastpool.executor, fastpool.cli, fastpool.metrics;"
            "from fastpool import _pick_core; print(sys._is_gil_enabled(), _pick_core.NATIVE)")
    proc = run_py(code, flags=("-W", "error"), timeout=120)
    assert proc.returncode == 0, str(proc)
    gil, native = proc.stdout.split()
    assert gil == "False"
    if os.environ.get("FASTPOOL_REQUIRE_NATIVE"):
        assert native == "True"


def test_idle_worker_spin_is_short_without_the_gil():
    """Issue 10 point 7. A worker polls the queue briefly before parking. With the GIL it
    then parks on the GIL until the submitter blocks, so 50 us only bridges a wake-up;
    without the GIL a 50 us poll never ended in a submit(...).result() loop (each next
    task came sooner) and kept a core busy-waiting: there the poll must stay short."""
    core = pytest.importorskip("fastpool._core")
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    if gil:
        assert core.spin_ns() == 50_000
    else:
        assert 0 < core.spin_ns() <= 10_000
