"""os.fork() while the pool's workers are busy and work is queued.

Expected in the child: no hang; the futures of work queued at fork time are
cancelled (that work belongs to the parent, which runs it); the pool stays usable
(a new submit runs). In the parent: nothing changes, everything completes.
argv[1]: busy (workers blocked, work queued) or churn (workers cycling at fork time).
"""
import concurrent.futures as cf
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
import warnings

_root = os.environ.get("FASTPOOL_TEST_PATH")  # the package under test (tests/conftest.py)
if _root and _root not in sys.path:
    sys.path.insert(0, _root)

import fastpool  # noqa: E402

faulthandler.dump_traceback_later(60, exit=True)  # a hang dumps stacks, then exits 1
# 3.12+: "This process is multi-threaded, use of fork() may lead to deadlocks".
warnings.filterwarnings("ignore", category=DeprecationWarning)


def child_watchdog():
    # faulthandler's timer thread does not exist in a forked child (re-arming it would
    # wait for that thread forever): a hang here is cut by SIGALRM, after a stack dump.
    faulthandler.register(signal.SIGALRM, all_threads=True, chain=True)
    signal.alarm(20)


def check_child(ex, queued):
    child_watchdog()
    try:
        for f in queued:
            assert f.cancelled(), f"queued future not cancelled in the child: {f!r}"
        # wait() must not hang on them either.
        done, not_done = cf.wait(queued, timeout=5)
        assert not not_done
        assert ex.submit(pow, 2, 5).result(timeout=10) == 32
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
        ex.shutdown(wait=True)
        # A brand-new pool works too.
        with fastpool.ThreadPoolExecutor(2) as ex2:
            assert ex2.submit(str, 7).result(timeout=10) == "7"
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def fork_and_check(ex, queued):
    pid = os.fork()
    if pid == 0:
        check_child(ex, queued)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: {status}"


def busy():
    """Workers blocked in tasks, more work queued behind them."""
    gate = threading.Event()
    ex = fastpool.ThreadPoolExecutor(max_workers=2)
    running = [ex.submit(gate.wait, 30) for _ in range(2)]
    while sum(f.running() for f in running) < 2:
        time.sleep(0.01)
    queued = [ex.submit(pow, i, 2) for i in range(50)]
    for _ in range(3):
        fork_and_check(ex, queued)
    gate.set()
    # The parent is unaffected: everything runs, the pool stays usable.
    assert [f.result(timeout=20) for f in running] == [True, True]
    assert [f.result(timeout=20) for f in queued] == [i * i for i in range(50)]
    assert ex.submit(str, 1).result(timeout=10) == "1"
    ex.shutdown(wait=True)


def churn():
    """Fork while workers and submitters cycle through tiny tasks: the queue's locks
    and the futures' state are in use at the moment of each fork."""
    ex = fastpool.ThreadPoolExecutor(max_workers=2)
    stop = threading.Event()

    def feeder():
        while not stop.is_set():
            for f in [ex.submit(abs, -i) for i in range(200)]:
                f.result(timeout=20)

    feeders = [threading.Thread(target=feeder) for _ in range(2)]
    for t in feeders:
        t.start()
    # Up to 200 forks, at least 20: each fork stops every thread of the process (with the
    # GIL off, until each one notices), slow on a loaded machine, so 20 s bound the rest.
    end = time.monotonic() + 20
    try:
        for i in range(200):
            if i >= 20 and time.monotonic() > end:
                break
            pid = os.fork()
            if pid == 0:
                child_watchdog()
                try:
                    assert ex.submit(pow, 3, 3).result(timeout=10) == 27
                except BaseException:
                    traceback.print_exc()
                    sys.stderr.flush()
                    os._exit(1)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, \
                f"child failed: {os.waitstatus_to_exitcode(status)}"
    finally:
        # Also when a child failed: feeders still submitting as the interpreter exits
        # would bury that failure under "cannot schedule new futures after interpreter
        # shutdown" errors (how one showed in CI).
        stop.set()
        for t in feeders:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in feeders)
    ex.shutdown(wait=True)


{"busy": busy, "churn": churn}[sys.argv[1]]()
print(f"ok {sys.argv[1]}", flush=True)
