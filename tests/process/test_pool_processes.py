"""Pool(backend="processes"): every Pool feature with the calls run in worker processes,
and what only processes allow -- a deadline or a timed-out shutdown stops the call (its
process is killed), a crashed process fails only its own task, the pool heals, and no
process outlives the pool or its parent.

The functions the workers run are in tests/proc_support.py (they import it by name);
gates and counters are files, in tmp_path.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

import pytest
import proc_support as ps
from pool_support import PROMPT, check_invariant, wait_until

from fastpool import (CancelToken, DeadlineExceeded, Pool, ProcessBackend, QueueFull, Retry,
                      WorkerCrashed, _procbackend)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and /proc")
LINUX = sys.platform.startswith("linux")


@pytest.fixture
def procpool():
    """procpool(...) -> Pool(backend="processes"), shut down at the end of the test."""
    pools = []

    def make(workers=2, **kwargs):
        kwargs.setdefault("backend", "processes")
        pool = Pool(workers, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown(timeout=PROMPT)


class Gate:
    def __init__(self, tmp_path):
        self.path = str(tmp_path / "gate")
        self.started = tmp_path / "started"
        self.started.mkdir()

    def args(self, value=None):
        return (self.path, value, str(self.started))

    def pids(self):
        return sorted(int(p.name) for p in self.started.iterdir())

    def wait_started(self, n):
        wait_until(lambda: len(self.pids()) >= n, what=f"{n} gated calls to start")

    def open(self):
        open(self.path, "w").close()


# -- the ordinary API ------------------------------------------------------------------

def test_submit_runs_in_worker_processes(procpool):
    pool = procpool(2)
    assert pool.submit(ps.square, 7).result(PROMPT) == 49
    pids = {pool.submit(ps.pid).result(PROMPT) for _ in range(20)}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2  # one process per dispatcher, reused
    f = pool.try_submit(ps.square, 3)
    assert f is not None and f.result(PROMPT) == 9
    assert pool.schedule(ps.square, (4,), key="k").result(PROMPT) == 16
    check_invariant(pool.stats())


def test_exception_keeps_its_type_and_remote_traceback(procpool):
    pool = procpool(1)
    with pytest.raises(KeyError, match="nope") as info:
        pool.submit(ps.boom, "nope").result(PROMPT)
    assert "boom" in str(info.value.__cause__)  # the worker's traceback, as the stdlib
    assert pool.submit(ps.square, 2).result(PROMPT) == 4  # the same process goes on


def test_lambdas_and_closures_with_cloudpickle(procpool):
    pytest.importorskip("cloudpickle")
    pool = procpool(1)
    k = 5
    assert pool.submit(lambda x: x + k, 1).result(PROMPT) == 6
    assert list(pool.map(lambda x: -x, range(3))) == [0, -1, -2]


def test_without_cloudpickle_a_clear_error(procpool, monkeypatch):
    monkeypatch.setattr(_procbackend, "_cloudpickle", None)
    pool = procpool(1)
    with pytest.raises(TypeError, match=r"pip install 'fastpool\[cloudpickle\]'"):
        pool.submit(lambda: 1).result(PROMPT)
    assert pool.submit(ps.square, 3).result(PROMPT) == 9


def test_unpicklable_result_fails_its_task(procpool):
    pool = procpool(1)
    with pytest.raises(RuntimeError, match="cannot send the task's result"):
        pool.submit(ps.unpicklable_result).result(PROMPT)
    assert pool.submit(ps.square, 3).result(PROMPT) == 9


@pytest.mark.parametrize("cloudpickle", [True, False])
def test_main_function(run_py, cloudpickle):
    # `python -c`: a worker cannot import __main__, so plain pickle (by name) cannot
    # send its functions; cloudpickle sends them by value.
    if cloudpickle:
        pytest.importorskip("cloudpickle")
    code = textwrap.dedent("""
        import sys
        import fastpool._procbackend as pb
        if sys.argv[1] == "no":
            pb._cloudpickle = None
        from fastpool import Pool
        def f(x):
            return x + 1
        with Pool(1, backend="processes") as pool:
            try:
                print("OK", pool.submit(f, 1).result(30))
            except RuntimeError as exc:
                print("ERR", exc)
    """)
    done = run_py(code, args=("yes" if cloudpickle else "no",))
    assert done.returncode == 0, done
    if cloudpickle:
        assert "OK 2" in done.stdout, done
    else:
        assert "ERR" in done.stdout and "fastpool[cloudpickle]" in done.stdout, done


def test_backpressure_and_try_submit(procpool, tmp_path):
    gate = Gate(tmp_path)
    pool = procpool(1, queue_size=1)
    running = pool.submit(ps.gated, *gate.args(1))
    gate.wait_started(1)
    queued = pool.submit(ps.square, 2)
    assert pool.try_submit(ps.square, 3) is None
    with pytest.raises(QueueFull):
        pool.schedule(ps.square, (3,), timeout=0.05)
    s = pool.stats()
    assert (s.running, s.queued, s.rejected) == (1, 1, 2)  # try_submit, schedule
    gate.open()
    assert running.result(PROMPT) == 1 and queued.result(PROMPT) == 4
    check_invariant(pool.stats())


def test_retries_and_dead_letters(procpool, tmp_path):
    pool = procpool(2, retry=Retry(attempts=3, backoff=0))
    ok = pool.submit(ps.flaky, str(tmp_path / "a"), 2, "done")
    assert ok.result(PROMPT) == "done"
    bad = pool.schedule(ps.flaky, (str(tmp_path / "b"), 99), key="b")
    with pytest.raises(ValueError, match="attempt 3 fails"):
        bad.result(PROMPT)
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed, s.retried, s.dead_lettered) == (1, 1, 4, 1)
    [letter] = list(pool.dead_letters)
    assert letter.key == "b" and letter.attempts == 3
    check_invariant(s)


@pytest.mark.parametrize("ordered", [True, False])
def test_map_with_progress(procpool, ordered):
    pool = procpool(2)
    seen = []
    out = list(pool.map(ps.square, range(50), ordered=ordered, progress=seen.append))
    assert (out if ordered else sorted(out)) == [x * x for x in range(50)]
    assert seen and seen[-1].succeeded == 50
    assert list(pool.map(ps.square, range(10), chunksize=4)) == [x * x for x in range(10)]


def test_initializer_runs_in_each_process(procpool):
    pool = procpool(2, initializer=ps.init, initargs=("db",))
    value, where = pool.submit(ps.read_init).result(PROMPT)
    assert value == "db" and where != os.getpid()
    assert ps.STATE.get("init") is None  # not in the dispatcher threads


def test_failing_initializer_breaks_the_pool(procpool):
    pool = procpool(1, initializer=ps.init_fails)
    with pytest.raises(BrokenProcessPool, match="initializer failed") as info:
        pool.submit(ps.square, 1).result(PROMPT)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(BrokenProcessPool):
        pool.submit(ps.square, 1).result(PROMPT)


def test_refused_options():
    with pytest.raises(ValueError, match="copy_context"):
        Pool(1, backend="processes", copy_context=True)
    with pytest.raises(ValueError, match="'processes'"):
        Pool(1, backend="threads")
    import multiprocessing as mp
    if "fork" in mp.get_all_start_methods():
        with pytest.raises(ValueError, match="fork"):
            ProcessBackend(mp_context=mp.get_context("fork"))
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        ProcessBackend(max_tasks_per_child=0)
    backend = ProcessBackend()
    Pool(1, backend=backend).shutdown()
    with pytest.raises(ValueError, match="one Pool"):
        Pool(1, backend=backend)


def test_max_tasks_per_child(procpool):
    pool = procpool(1, backend=ProcessBackend(max_tasks_per_child=2))
    pids = [pool.submit(ps.pid).result(PROMPT) for _ in range(6)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    wait_until(lambda: not ps.alive(pids[0]) and not ps.alive(pids[2]),
               what="recycled processes to exit")


# -- what only processes allow ----------------------------------------------------------

def test_deadline_kills_the_stuck_call(procpool, tmp_path):
    gate = Gate(tmp_path)
    pool = procpool(1)
    t0 = time.monotonic()
    f = pool.schedule(ps.sleep, (60,), deadline=0.5)
    with pytest.raises(DeadlineExceeded):
        f.result(PROMPT)
    assert time.monotonic() - t0 < PROMPT
    # The process that ran it is gone, a fresh one takes the next call.
    wait_until(lambda: pool.stats().running == 0, what="the dispatcher to be free")
    stuck = pool.submit(ps.gated, *gate.args())
    gate.wait_started(1)
    [fresh] = gate.pids()
    gate.open()
    stuck.result(PROMPT)
    t0 = time.monotonic()
    report = pool.shutdown(timeout=5)
    assert time.monotonic() - t0 < 5 + 5
    assert not report.timed_out and report.still_running == []
    assert not ps.alive(fresh)


def test_caller_token_stops_the_call(procpool, tmp_path):
    gate = Gate(tmp_path)
    pool = procpool(1)
    token = CancelToken()
    f = pool.schedule(ps.gated, gate.args(), token=token)
    gate.wait_started(1)
    [pid] = gate.pids()
    token.cancel("enough")
    with pytest.raises(CancelledError):
        f.result(PROMPT)
    wait_until(lambda: not ps.alive(pid), what="the process to be killed")
    assert pool.submit(ps.square, 3).result(PROMPT) == 9


def test_timed_shutdown_kills_what_still_runs(tmp_path):
    gate = Gate(tmp_path)
    pool = Pool(2, backend="processes")
    stuck = pool.submit(ps.sleep, 60)
    other = pool.submit(ps.gated, *gate.args())
    gate.wait_started(1)
    queued = pool.submit(ps.square, 2)
    wait_until(lambda: pool.stats().running == 2)
    t0 = time.monotonic()
    report = pool.shutdown(timeout=1)
    assert time.monotonic() - t0 < 1 + 5
    assert report.timed_out
    assert {t.future for t in report.still_running} == {stuck, other}
    assert [t.future for t in report.not_started] == [queued]
    # Nothing runs any more: every worker process is gone when shutdown returns.
    assert pool._outcomes.backend._procs == {}
    assert not ps.alive(gate.pids()[0])
    if LINUX:
        assert _worker_pids() == []
    with pytest.raises(CancelledError):
        stuck.result(PROMPT)


def _worker_pids():
    """Worker processes below this one: the forkserver and the resource tracker, one
    per parent and kept for later pools (as the stdlib's), do not count."""
    me = os.getpid()
    out = []
    for pid in ps.descendants(me):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"resource_tracker" in cmd or (b"forkserver" in cmd and ppid == me):
            continue
        out.append(pid)
    return out


def test_killed_worker_fails_only_its_task(procpool, tmp_path):
    gate = Gate(tmp_path)
    pool = procpool(2, retry=Retry(attempts=1))
    victim = pool.submit(ps.gated, *gate.args("a"))
    survivor = pool.submit(ps.gated, *gate.args("b"))
    gate.wait_started(2)
    queued = [pool.submit(ps.square, i) for i in range(10)]
    pids = gate.pids()
    # Which pid runs which task is not known: kill one, then see which failed.
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: victim.done() or survivor.done(), what="the killed task to fail")
    gate.open()
    failed = [f for f in (victim, survivor) if f.exception(PROMPT) is not None]
    assert len(failed) == 1
    err = failed[0].exception()
    assert isinstance(err, WorkerCrashed) and isinstance(err, BrokenProcessPool)
    assert "SIGKILL" in str(err)
    assert [f.result(PROMPT) for f in queued] == [i * i for i in range(10)]
    assert pool.submit(ps.square, 5).result(PROMPT) == 25  # healed
    s = pool.stats()
    assert (s.failed, s.succeeded) == (1, 12)
    check_invariant(s)


def test_crash_is_retried_then_dead_lettered(procpool, tmp_path):
    pool = procpool(1, retry=Retry(attempts=2, backoff=0))
    assert pool.submit(ps.die_once, str(tmp_path / "c"), "ok").result(PROMPT) == "ok"
    f = pool.schedule(ps.die, (5,), key="crash")
    with pytest.raises(WorkerCrashed, match="exit code 5"):
        f.result(PROMPT)
    assert pool.join(PROMPT)
    [letter] = list(pool.dead_letters)
    assert letter.key == "crash" and letter.attempts == 2
    s = pool.stats()
    assert (s.succeeded, s.failed, s.retried, s.dead_lettered) == (1, 1, 2, 1)
    assert pool.submit(ps.square, 4).result(PROMPT) == 16


# -- pipelining: a dispatcher sends quick calls before the answers of those ahead ----------
# Calls of one function are pipelined: these tests run ps.act, which does what each needs.

@pytest.fixture
def pipelined(monkeypatch):
    """Calls pipelined as deep as they go (256), however long they take: once a call's
    time is known, a dispatcher sends what is queued in one batch."""
    monkeypatch.setattr(_procbackend, "_PIPELINE_BUDGET", 1e9)


def _hold(pool, gate):
    """Warm the pool's one dispatcher on ps.act, then hold it on a gated act call: the
    act calls submitted meanwhile go out in one batch after it."""
    assert [pool.submit(ps.act, None, i).result(PROMPT) for i in range(3)] == [0, 1, 2]
    held = pool.submit(ps.act, None, "held", "gate", gate.path, str(gate.started))
    gate.wait_started(1)
    return held


def test_pipelined_crash_fails_only_its_call(procpool, pipelined, tmp_path):
    # The calls sent behind the one that crashed never started: a fresh process runs
    # them, each exactly once.
    gate = Gate(tmp_path)
    log = str(tmp_path / "log")
    pool = procpool(1)
    held = _hold(pool, gate)
    before = [pool.submit(ps.act, log, i) for i in range(10)]
    crash = pool.submit(ps.act, log, "x", "die")
    after = [pool.submit(ps.act, log, i) for i in range(10, 20)]
    wait_until(lambda: pool.stats().queued == 21)
    gate.open()
    held.result(PROMPT)
    with pytest.raises(WorkerCrashed, match="exit code 7"):
        crash.result(PROMPT)
    assert [f.result(PROMPT) for f in before + after] == list(range(20))
    assert sorted(map(int, ps.runs(log))) == list(range(20))  # each ran once
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed) == (3 + 1 + 20, 1)
    check_invariant(s)


def test_pipelined_crash_is_retried(procpool, pipelined, tmp_path):
    gate = Gate(tmp_path)
    log = str(tmp_path / "log")
    pool = procpool(1, retry=Retry(attempts=2, backoff=0))
    held = _hold(pool, gate)
    fs = [pool.submit(ps.act, log, i) for i in range(5)]
    crash = pool.submit(ps.act, log, "ok", "die_once", str(tmp_path / "c"))
    fs += [pool.submit(ps.act, log, i) for i in range(5, 10)]
    gate.open()
    held.result(PROMPT)
    assert crash.result(PROMPT) == "ok"
    assert [f.result(PROMPT) for f in fs] == list(range(10))
    assert sorted(map(int, ps.runs(log))) == list(range(10))
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed, s.retried, s.dead_lettered) == (3 + 1 + 11, 0, 1, 0)
    check_invariant(s)


def test_deadline_task_is_never_pipelined(procpool, pipelined, tmp_path):
    # A task with a deadline waits for the calls ahead of it to finish, runs alone in
    # its process, and its deadline kills only it: the calls queued after it run once.
    gate = Gate(tmp_path)
    log = str(tmp_path / "log")
    pool = procpool(1)
    held = _hold(pool, gate)
    before = [pool.submit(ps.act, log, i) for i in range(5)]
    stuck = pool.schedule(ps.act, (log, "x", "sleep", 60), deadline=1.0)
    after = [pool.submit(ps.act, log, i) for i in range(5, 10)]
    gate.open()
    held.result(PROMPT)
    with pytest.raises(DeadlineExceeded):
        stuck.result(PROMPT)
    assert [f.result(PROMPT) for f in before + after] == list(range(10))
    assert sorted(map(int, ps.runs(log))) == list(range(10))
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed) == (3 + 1 + 10, 1)
    check_invariant(s)


def test_token_cancelled_before_its_call_is_sent(procpool, pipelined, tmp_path):
    # Taken by the dispatcher, waiting for the call ahead: its token is cancelled, so
    # it never runs, and the process is not killed for it.
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    gate, ahead = Gate(tmp_path / "1"), Gate(tmp_path / "2")
    log = str(tmp_path / "log")
    pool = procpool(1)
    held = _hold(pool, gate)
    token = CancelToken()
    first = pool.submit(ps.act, None, "a", "gate", ahead.path, str(ahead.started))
    f = pool.schedule(ps.act, (log, "no"), token=token)
    gate.open()
    held.result(PROMPT)
    ahead.wait_started(1)
    wait_until(lambda: pool.stats().running == 2, what="both in the dispatcher's hands")
    token.cancel("changed my mind")
    ahead.open()
    first.result(PROMPT)
    with pytest.raises(CancelledError):
        f.result(PROMPT)
    assert pool.join(PROMPT)
    assert ps.runs(log) == []
    assert pool.submit(ps.pid).result(PROMPT) == ahead.pids()[0]  # the same process
    s = pool.stats()
    assert (s.succeeded, s.cancelled) == (3 + 2 + 1, 1)
    check_invariant(s)


def test_timed_shutdown_with_pipelined_calls(pipelined, tmp_path):
    # Calls sent behind a stuck one are in a dispatcher's hands (reported still running);
    # the killed process never started them: they end cancelled, each in one state.
    gate = Gate(tmp_path)
    log = str(tmp_path / "log")
    pool = Pool(1, backend="processes")
    held = _hold(pool, gate)
    stuck = pool.submit(ps.act, log, "x", "sleep", 60)
    behind = [pool.submit(ps.act, log, i) for i in range(10)]
    gate.open()
    held.result(PROMPT)
    wait_until(lambda: pool.stats().running == 11, what="the batch to be sent")
    report = pool.shutdown(timeout=1)
    assert report.timed_out
    assert report.completed + len(report.not_started) + len(report.still_running) == 3 + 1 + 11
    assert {t.future for t in report.still_running} == {stuck, *behind}
    for f in [stuck, *behind]:
        with pytest.raises(CancelledError):
            f.result(PROMPT)
    assert ps.runs(log) == []
    assert pool._outcomes.backend._procs == {}
    s = pool.stats()
    assert (s.succeeded, s.cancelled, s.running) == (4, 11, 0)
    check_invariant(s)


def test_pipelined_batch_that_cannot_be_loaded(procpool, pipelined, tmp_path):
    # A batch goes in one pickle; a call in it that the worker cannot unpickle fails
    # alone (as when sent on its own), the others run once.
    gate = Gate(tmp_path)
    log = str(tmp_path / "log")
    pool = procpool(1)
    held = _hold(pool, gate)
    before = [pool.submit(ps.act, log, i) for i in range(5)]
    bad = pool.submit(ps.act, log, ps.Unloadable())
    after = [pool.submit(ps.act, log, i) for i in range(5, 10)]
    gate.open()
    held.result(PROMPT)
    with pytest.raises(KeyError, match="cannot load me"):
        bad.result(PROMPT)
    assert [f.result(PROMPT) for f in before + after] == list(range(10))
    assert sorted(map(int, ps.runs(log))) == list(range(10))
    s = pool.stats()
    assert (s.succeeded, s.failed) == (3 + 1 + 10, 1)
    check_invariant(s)


def test_pipelined_call_that_cannot_be_pickled(procpool, pipelined, tmp_path, monkeypatch):
    gate = Gate(tmp_path)
    log = str(tmp_path / "log")
    monkeypatch.setattr(_procbackend, "_cloudpickle", None)
    pool = procpool(1)
    held = _hold(pool, gate)
    before = [pool.submit(ps.act, log, i) for i in range(5)]
    bad = pool.submit(ps.act, log, lambda: 1)
    after = [pool.submit(ps.act, log, i) for i in range(5, 10)]
    gate.open()
    held.result(PROMPT)
    with pytest.raises(TypeError, match="cannot pickle"):
        bad.result(PROMPT)
    assert [f.result(PROMPT) for f in before + after] == list(range(10))
    assert sorted(map(int, ps.runs(log))) == list(range(10))


def test_pipelined_answers_large_and_small(procpool, pipelined, tmp_path):
    # Answers are read in bulk and split: small ones many to a read, large ones (more
    # than a pipe holds) over many reads.
    gate = Gate(tmp_path)
    pool = procpool(1)
    held = _hold(pool, gate)
    sizes = [1, 300_000, 5, 70_000, 16_385, 0, 3, 1 << 20, 2] * 3
    values = [bytes([65 + i % 26]) * n for i, n in enumerate(sizes)]
    fs = [pool.submit(ps.act, None, v) for v in values]
    gate.open()
    held.result(PROMPT)
    for f, v in zip(fs, values):
        assert f.result(PROMPT) == v


def test_pipelined_task_whose_start_fails(procpool, pipelined, tmp_path, monkeypatch):
    # An error in the pool's own start of a task a dispatcher took to pipeline fails
    # that task (as the worker loop would), and nothing else.
    from fastpool.pool._outcomes import Outcomes
    start = Outcomes.start

    def failing_start(self, task):
        if task.args[1:2] == ("bad",):
            raise RuntimeError("start failed")
        return start(self, task)

    monkeypatch.setattr(Outcomes, "start", failing_start)
    gate = Gate(tmp_path)
    log = str(tmp_path / "log")
    pool = procpool(1)
    held = _hold(pool, gate)
    fs = [pool.submit(ps.act, log, i) for i in range(5)]
    bad = pool.submit(ps.act, log, "bad")
    fs += [pool.submit(ps.act, log, i) for i in range(5, 10)]
    gate.open()
    held.result(PROMPT)
    with pytest.raises(RuntimeError, match="start failed"):
        bad.result(PROMPT)
    assert [f.result(PROMPT) for f in fs] == list(range(10))
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed) == (3 + 1 + 10, 1)
    check_invariant(s)


def test_max_tasks_per_child_pipelined(procpool, pipelined, tmp_path):
    gate = Gate(tmp_path)
    pool = procpool(1, backend=ProcessBackend(max_tasks_per_child=3))
    held = _hold(pool, gate)
    fs = [pool.submit(ps.act, None, i, "pid") for i in range(20)]
    gate.open()
    held.result(PROMPT)
    pids = [f.result(PROMPT) for f in fs]
    assert max(pids.count(p) for p in set(pids)) <= 3
    assert len(set(pids)) >= 7


def test_another_function_is_not_taken_on_a_quick_ones_measure(procpool, tmp_path):
    # Dispatchers pipeline many quick calls; the first call of another function waits
    # for them and goes alone, till its own time is known: a slow function's calls are
    # not taken in numbers by one dispatcher on the quick one's measure while the other
    # process idles.
    gate = Gate(tmp_path)
    pool = procpool(2)
    # Both processes started (a start can take a second on a loaded machine).
    held = [pool.submit(ps.gated, *gate.args()) for _ in range(2)]
    gate.wait_started(2)
    gate.open()
    for f in held:
        f.result(PROMPT)
    for _ in range(3):
        assert [f.result(PROMPT) for f in [pool.submit(ps.square, i) for i in range(300)]] \
            == [i * i for i in range(300)]
    pids = [f.result(PROMPT) for f in [pool.submit(ps.act, None, i, "sleep_pid", 0.3)
                                       for i in range(6)]]
    counts = sorted(pids.count(p) for p in set(pids))
    assert counts in ([3, 3], [2, 4]), counts  # (5 and 1: taken on the quick measure)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_handle_signals(procpool, tmp_path):
    gate = Gate(tmp_path)
    sig = signal.SIGUSR1
    pool = procpool(1)
    pool.handle_signals(signals=(sig,), timeout=PROMPT * 4, exit=False)
    running = pool.submit(ps.gated, *gate.args("ran"))
    gate.wait_started(1)
    [pid] = gate.pids()
    queued = [pool.submit(ps.square, i) for i in range(3)]
    signal.raise_signal(sig)  # graceful: stop accepting, drain...
    wait_until(lambda: pool._shutdown, what="shutdown to start")
    with pytest.raises(RuntimeError):
        pool.submit(ps.square, 1)
    assert not running.done()
    signal.raise_signal(sig)  # ...second signal: stop now (the process is killed)
    with pytest.raises(CancelledError):
        running.result(PROMPT)
    report = pool.shutdown()
    assert report.timed_out
    assert [t.future for t in report.not_started] == queued
    assert pool.signal_received == sig
    wait_until(lambda: not ps.alive(pid), what="the worker process to end")


def test_idle_dispatcher_closes_its_process(procpool):
    pool = procpool(1, idle_timeout=0.2)
    pid = pool.submit(ps.pid).result(PROMPT)
    wait_until(lambda: not ps.alive(pid), what="the idle worker's process to exit")
    assert pool.submit(ps.pid).result(PROMPT) != pid


# -- no leaks -----------------------------------------------------------------------------

@pytest.mark.skipif(not LINUX, reason="counts processes in /proc")
def test_create_shutdown_cycles_leak_nothing(run_py):
    code = textwrap.dedent("""
        import os, sys, warnings
        sys.path.insert(0, %r)
        import proc_support as ps
        from fastpool import Pool
        warnings.simplefilter("error")
        def cycle():
            with Pool(2, backend="processes") as pool:
                assert pool.submit(ps.square, 3).result(30) == 9
        cycle()  # the forkserver and the resource tracker start once, as the stdlib's
        before = ps.descendants(os.getpid())
        shm = set(os.listdir("/dev/shm"))
        for _ in range(199):
            cycle()
        after = ps.descendants(os.getpid())
        # /dev/shm is the machine's: other programs' entries come and go. Ours are the
        # ones a process of ours still maps (a leaked one is never unmapped).
        new_shm = set(os.listdir("/dev/shm")) - shm
        mapped = set()
        for p in [os.getpid(), *after]:
            try:
                with open(f"/proc/{p}/maps") as f:
                    mapped |= {line.rsplit("/", 1)[-1].strip() for line in f
                               if "/dev/shm/" in line}
            except OSError:
                pass
        print("PROCS", len(before), len(after), "SHM", sorted(new_shm & mapped))
        assert after == before, (before, after)
        assert not new_shm & mapped, new_shm & mapped
    """ % os.path.dirname(os.path.abspath(ps.__file__)))
    done = run_py(code, timeout=300)
    assert done.returncode == 0, done
    assert "PROCS" in done.stdout, done
    assert "resource_tracker" not in done.stderr and "leaked" not in done.stderr, done
    assert "Warning" not in done.stderr, done


@pytest.mark.skipif(not LINUX, reason="finds processes in /proc")
def test_parent_sigkill_leaves_no_orphans(tmp_path):
    import subprocess
    code = textwrap.dedent("""
        import os, sys, time
        sys.path.insert(0, %r)
        import proc_support as ps
        from fastpool import Pool
        pool = Pool(2, backend="processes")
        pids = {pool.submit(ps.pid).result(30) for _ in range(10)}
        pool.submit(ps.sleep, 60)  # one stuck in a call, one idle (maybe)
        time.sleep(0.3)
        print(" ".join(map(str, ps.descendants(os.getpid()))), flush=True)
        time.sleep(60)
    """ % os.path.dirname(os.path.abspath(ps.__file__)))
    env = dict(os.environ, FASTPOOL_TEST_PATH=os.path.dirname(os.path.dirname(
        os.path.abspath(_procbackend.__file__))))
    prologue = ("import os, sys; sys.path.insert(0, os.environ['FASTPOOL_TEST_PATH'])\n")
    proc = subprocess.Popen([sys.executable, "-I", "-c", prologue + code], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) >= 2, line  # the forkserver and its workers at least
        proc.kill()
        proc.wait(PROMPT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    wait_until(lambda: not any(ps.alive(p) for p in pids), timeout=PROMPT,
               what=f"the workers {pids} to exit with their parent")
