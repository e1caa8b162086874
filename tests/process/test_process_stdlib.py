"""The process case of tools/stdlib_tests.py (CPython's ProcessPool tests with
fastpool's ProcessPoolExecutor swapped in): its pieces, and fastpool's own tests of the
differences it excludes on purpose."""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fastpool.process import ProcessPoolExecutor

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
CTX = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def _harness():
    spec = importlib.util.spec_from_file_location("stdlib_tests", TOOLS / "stdlib_tests.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SWAPPED = ("import concurrent.futures as cf, concurrent.futures.process as p, fastpool\n"
           "print(cf.ProcessPoolExecutor is p.ProcessPoolExecutor is fastpool.ProcessPoolExecutor,"
           " cf.ThreadPoolExecutor is fastpool.ThreadPoolExecutor)\n")


@pytest.mark.parametrize("process", [False, True])
def test_swap_puts_the_process_executor_in_place_only_for_the_process_case(process):
    code = f"exec(open({str(TOOLS / 'stdlib_swap.py')!r}).read(), {{'__name__': 'swap'}})\n"
    env = dict(os.environ)
    env.pop("FASTPOOL_STDLIB_SWAP_PROCESS", None)
    if process:
        env["FASTPOOL_STDLIB_SWAP_PROCESS"] = "1"
    out = subprocess.run([sys.executable, "-I", "-c", code + SWAPPED], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    # The thread case stays exactly as it was: only the thread executor is swapped.
    assert out.split() == [str(process), "True"]


def test_each_intended_process_difference_names_an_issue_and_a_test_of_ours():
    harness = _harness()
    assert harness.INTENDED_PROCESS
    for test_id, (issue, why, ours, until) in harness.INTENDED_PROCESS.items():
        assert test_id.startswith("test_concurrent_futures") and until > (3, 9), test_id
        assert issue.startswith(("gh-", "bpo-")) and why, test_id
        path, _, name = ours.partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), ours


def test_process_case_selects_the_process_tests():
    harness = _harness()
    assert harness.PROCESS_MATCH == ["ProcessPool*"]
    assert "test_process_pool" in harness.PROCESS_CF_MODULES
    assert "test_deadlock" in harness.PROCESS_CF_MODULES


# ------------------------------------------------------- the intended differences

def test_saturation_with_blocking_tasks():
    """bpo-39207's on-demand workers: with every worker busy, each submit starts one
    more, up to max_workers (CPython's test_saturation, with tasks that pickle)."""
    with ProcessPoolExecutor(4, mp_context=CTX) as ex:
        fs = [ex.submit(time.sleep, 0.5) for _ in range(15 * 4)]
        assert len(ex._processes) == 4
        assert [f.result(timeout=60) for f in fs] == [None] * 60
        assert len(ex._processes) == 4


def _local_function_task():
    def acquire_lock(lock):  # not picklable: a local function
        lock.acquire()
    return acquire_lock


def test_unpicklable_tasks_start_no_extra_worker():
    """A task that does not pickle fails its own future at once and occupies no worker:
    the idle worker takes the next one (the stdlib starts a new process per submit)."""
    with ProcessPoolExecutor(5, mp_context=CTX) as ex:
        assert ex.submit(abs, -1).result(timeout=60) == 1
        sem = threading.Semaphore(0)  # does not pickle either
        fs = [ex.submit(_local_function_task(), sem) for _ in range(3)]
        fs += [ex.submit(sem.acquire) for _ in range(3)]
        for f in fs:
            assert isinstance(f.exception(timeout=60), Exception)
        assert len(ex._processes) == 1
        assert ex.submit(abs, -2).result(timeout=60) == 2


def test_one_background_thread_and_no_feeder():
    before = set(threading.enumerate())
    with ProcessPoolExecutor(2, mp_context=CTX) as ex:
        assert sum(ex.map(abs, range(-100, 0))) == 5050
        new = set(threading.enumerate()) - before
        assert [t.name for t in new] == [ex._executor_manager_thread.name]


def test_failed_worker_replacement_breaks_pool(monkeypatch):
    """max_tasks_per_child: the worker leaves after its task, no successor can be
    started and none is left: the queued futures fail with BrokenProcessPool (3.14's
    text), rather than waiting forever."""
    from concurrent.futures.process import BrokenProcessPool

    from fastpool import process as proc

    ex = ProcessPoolExecutor(1, mp_context=CTX, max_tasks_per_child=1)
    try:
        first = ex.submit(time.sleep, 0.5)
        rest = [ex.submit(abs, -i) for i in range(3)]
        while not first.running():
            time.sleep(0.01)

        def fail(self):
            raise OSError("spawn failed")
        monkeypatch.setattr(proc._State, "spawn_locked", fail)
        assert first.result(timeout=60) is None
        for f in rest:
            with pytest.raises(BrokenProcessPool, match="could not be started"):
                f.result(timeout=60)
    finally:
        monkeypatch.undo()
        ex.shutdown()


def test_queued_work_runs_after_the_executor_is_collected():
    """gh-152967's case: the executor is dropped while its only worker is about to
    leave at max_tasks_per_child, with work queued: the reader starts the successor
    (it needs no executor for that), and every future gets its result."""
    import gc
    import weakref

    ex = ProcessPoolExecutor(1, mp_context=CTX, max_tasks_per_child=1)
    fs = [ex.submit(time.sleep, 0.3)] + [ex.submit(abs, -i) for i in range(1, 4)]
    thread = ex._executor_manager_thread
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None
    assert [f.result(timeout=60) for f in fs] == [None, 1, 2, 3]
    thread.join(timeout=60)
    assert not thread.is_alive()
