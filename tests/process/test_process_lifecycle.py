"""fastpool.ProcessPoolExecutor leaves nothing behind: not after many create/shutdown
cycles, and not when its parent is killed outright while tasks run.

Each test drives a separate interpreter, so that what it leaves at exit (orphaned
workers, the resource tracker's warnings about leaked semaphores or shared memory)
is seen. Tasks are stdlib functions: workers never need to import this file.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import fastpool

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process checks")

METHODS = [m for m in ("fork", "forkserver", "spawn") if m in mp.get_all_start_methods()]
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastpool.__file__)))
PROLOGUE = ("import os, sys; p = os.environ.get('FASTPOOL_TEST_PATH')\n"
            "if p and p not in sys.path: sys.path.insert(0, p)\n")


def _popen(code: str) -> subprocess.Popen[str]:
    env = dict(os.environ, FASTPOOL_TEST_PATH=PACKAGE_ROOT)
    return subprocess.Popen([sys.executable, "-I", "-c", PROLOGUE + textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for its (new) parent to reap it is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return not os.path.exists("/proc")  # no /proc (macOS): kill(0) said alive


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if not _gone(p)]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.05)


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
@pytest.mark.parametrize("method", METHODS)
def test_workers_exit_when_the_parent_is_killed(method, busy):
    """SIGKILL the parent: its workers notice and exit, even those in the middle of a
    60 s task (no orphan keeps running, or holding memory, after its parent)."""
    parent = _popen(f"""
        import multiprocessing as mp, time
        from fastpool import ProcessPoolExecutor
        ex = ProcessPoolExecutor(2, mp_context=mp.get_context({method!r}))
        fs = [ex.submit(time.sleep, 0.3) for _ in range(4)]  # start both workers
        for f in fs: f.result()
        if {busy!r}:
            fs = [ex.submit(time.sleep, 60) for _ in range(2)]
            while not all(f.running() for f in fs): time.sleep(0.01)
            time.sleep(0.3)  # both sent to a worker and running there
        print(*ex._processes, flush=True)
        time.sleep(120)
        """)
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, (line, parent.stderr.read())  # type: ignore[union-attr]
        assert not any(_gone(p) for p in pids)  # alive while the parent is
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        assert not _wait_gone(pids, 20), "workers outlived their killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]
        parent.stderr.close()  # type: ignore[union-attr]


def _shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


# The child names its semaphores and shared memory with its own tag, so entries other
# programs create in /dev/shm meanwhile (CI runs several suites at once, and some kill
# their processes) are told apart from a leak of this one.
TAG_NAMES = """
import multiprocessing.process, multiprocessing.shared_memory, multiprocessing.synchronize
TAG = f"fptest{os.getpid()}x"
multiprocessing.process.current_process()._config["semprefix"] = "/mp-" + TAG
multiprocessing.shared_memory._SHM_NAME_PREFIX = "/psm_" + TAG
assert multiprocessing.synchronize.SemLock._make_name().startswith("/mp-" + TAG)
print(TAG, flush=True)
"""


# ~1 s per cycle on a loaded 2-core machine (the stdlib's executor is no faster):
# above pytest-timeout's 120 s default there, not a hang.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", METHODS)
def test_no_leaks_after_200_create_shutdown_cycles(method):
    """200 executors created, used and shut down (20 with spawn, where each worker is
    a fresh interpreter: ~0.2 s apiece here): no process left behind (workers,
    or the stdlib's forkserver / resource tracker beyond the one each keeps), no new
    /dev/shm entry, no thread left, and no resource-tracker warning at exit."""
    proc = _popen(TAG_NAMES + textwrap.dedent(f"""
        import multiprocessing as mp, os, threading, time
        from fastpool import ProcessPoolExecutor
        ctx = mp.get_context({method!r})
        def children():
            try:
                with open(f"/proc/{{os.getpid()}}/task/{{os.getpid()}}/children") as f:
                    return set(map(int, f.read().split()))
            except OSError:
                return {{p.pid for p in mp.active_children()}}
        threads = set(threading.enumerate())
        pids = []
        for i in range({20 if method == "spawn" else 200}):
            with ProcessPoolExecutor(1 + i % 2, mp_context=ctx) as ex:
                assert ex.submit(pow, i, 2).result() == i * i
                if i == 0:
                    # The forkserver and resource tracker (one each, for the whole
                    # program) exist from the first executor on.
                    base = children() - set(ex._processes)
                pids.extend(ex._processes)
        end = time.monotonic() + 20
        while children() - base and time.monotonic() < end:
            time.sleep(0.05)
        assert not children() - base, (children(), base)
        assert len(set(pids)) >= {20 if method == "spawn" else 200}, len(set(pids))
        assert set(threading.enumerate()) == threads, threading.enumerate()
        print(" ".join(map(str, pids)))
        """))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "resource_tracker" not in err and "leaked" not in err, err
    assert not err.strip(), err
    tag, *rest = out.split()
    pids = [int(p) for p in rest]
    assert not _wait_gone(pids, 20)
    # Semaphores (sem.mp-TAG...) and shared memory (psm_TAG...) the child made.
    assert not {e for e in _shm() if tag in e}
