"""Process-global scenarios, each in a fresh interpreter (tests/package/isolated/*.py).

Interpreter exit, garbage collection of a pool, fork: things a test cannot undo in
the pytest process. Each script asserts internally and exits non-zero on failure; a
hang is caught by the subprocess timeout (and by the script's faulthandler watchdog,
which dumps every thread's stack first).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "isolated"
MODULES = [pytest.param("fastpool", id="fastpool"),
           pytest.param("concurrent.futures", id="stdlib")]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("module", MODULES)
def test_exit_with_queued_work(run_script, module):
    proc = run_script(HERE / "exit_with_queued_work.py", args=(module,), timeout=60)
    assert proc.returncode == 0, proc
    out = lines(proc.stdout)
    done = sorted(int(line.split()[1]) for line in out if line.startswith("done "))
    assert done == list(range(220)), proc
    # Queued work finishes after the main thread's last statement, before the exit.
    assert "main thread ends" in out, proc
    assert proc.stderr == "", proc


@pytest.mark.parametrize("module", MODULES)
def test_gc_executor_with_queued_work(run_script, module):
    proc = run_script(HERE / "gc_executor.py", args=(module,), timeout=60)
    assert proc.returncode == 0, proc
    assert lines(proc.stdout) == ["ok cyclic=False", "ok cyclic=True", "ok dropped"], proc
    assert proc.stderr == "", proc


@pytest.mark.parametrize("module", MODULES)
def test_gc_executor_with_live_map(run_script, module):
    proc = run_script(HERE / "gc_executor_map.py", args=(module,), timeout=60)
    assert proc.returncode == 0, proc
    # map(buffersize=...): fastpool's on every Python, the stdlib's from 3.14.
    lazy = module == "fastpool" or sys.version_info >= (3, 14)
    assert lines(proc.stdout) == ["ok eager"] + ["ok buffersize"] * lazy, proc
    assert proc.stderr == "", proc


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("scenario", ["busy", "churn"])
def test_fork_while_busy(run_script, scenario):
    # busy: workers blocked in tasks, work queued. churn: workers and submitters
    # cycling through tiny tasks at the moment of each fork.
    proc = run_script(HERE / "fork_busy.py", args=(scenario,), timeout=90)
    assert proc.returncode == 0, proc
    assert lines(proc.stdout) == [f"ok {scenario}"], proc
    assert proc.stderr == "", proc


@pytest.mark.parametrize("module", MODULES)
def test_main_thread_ends_with_pool_open(run_script, module):
    proc = run_script(HERE / "main_ends_pool_open.py", args=(module,), timeout=60)
    assert proc.returncode == 0, proc
    assert lines(proc.stdout) == ["asyncio 256", "main thread ends", "slow task finished"], proc
    assert "KeyboardInterrupt" not in proc.stderr and "Traceback" not in proc.stderr, proc
    assert proc.stderr == "", proc


def test_scripts_all_collected():
    # A script added to tests/package/isolated/ must get a test here.
    scripts = sorted(p.name for p in HERE.glob("*.py"))
    assert scripts == sorted(["exit_with_queued_work.py", "gc_executor.py", "fork_busy.py",
                              "main_ends_pool_open.py", "gc_executor_map.py"]), scripts
