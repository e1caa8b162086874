"""core.Ledger and core.PoolTask: the Pool's bookkeeping, tested directly on both cores.

The Pool tests exercise them through the public API; these pin down the pieces the
Pool relies on -- one move() is one atomic step, the fast submit counts exactly what it
queues, the running set follows the running count, samples land in a fixed ring.
"""

from __future__ import annotations

import math
import sys
import threading

import pytest


class FakePool:
    """What PoolTask and Ledger.submit call back into."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def _check_idle(self) -> None:
        self.calls.append(("check_idle",))

    def _not_run(self, task, started) -> None:
        self.calls.append(("not_run", task, started))

    def _task_failed(self, task, exc) -> None:
        self.calls.append(("failed", task, exc))

    def _run_with_options(self, task) -> None:
        self.calls.append(("slow", task))

    def _start_worker(self) -> None:
        self.calls.append(("grow",))


def counts(core, ledger) -> dict[str, int]:
    names = ("submitted", "queued", "running", "retrying", "succeeded", "failed",
             "cancelled", "not_started", "retried", "dead_lettered", "rejected")
    return dict(zip(names, ledger.counts()))


def test_counter_indexes_follow_stats_fields(core_impl):
    from fastpool.stats import Stats

    fields = list(Stats.__dataclass_fields__)[2:13]  # after workers, idle_workers
    for i, name in enumerate(fields):
        assert getattr(core_impl, "N_" + name.upper()) == i
    assert core_impl.OUTSIDE == -1


def test_move_counts_submissions_and_extras(core_impl):
    ledger = core_impl.Ledger(core_impl.WorkQueue())
    c = core_impl
    assert ledger.move(c.OUTSIDE, c.N_QUEUED) is False  # nobody watches
    assert counts(c, ledger)["submitted"] == 1 and counts(c, ledger)["queued"] == 1
    ledger.move(c.N_QUEUED, c.N_RUNNING)
    ledger.move(c.N_RUNNING, c.N_RETRYING, c.N_RETRIED)
    ledger.move(c.N_RETRYING, c.N_FAILED, c.N_DEAD_LETTERED)
    got = counts(c, ledger)
    assert got == dict(submitted=1, queued=0, running=0, retrying=0, succeeded=0, failed=1,
                       cancelled=0, not_started=0, retried=1, dead_lettered=1, rejected=0)
    # Un-counting a submission (a put that failed), with a rejection.
    ledger.move(c.OUTSIDE, c.N_QUEUED)
    ledger.move(c.N_QUEUED, c.OUTSIDE, c.N_REJECTED)
    got = counts(c, ledger)
    assert got["submitted"] == 1 and got["queued"] == 0 and got["rejected"] == 1
    assert ledger.idle()


@pytest.mark.parametrize("args", [(-2, 1), (1, 11), (0, 1, 11), (0, 1, -2)])
def test_move_rejects_bad_indexes(core_impl, args):
    ledger = core_impl.Ledger(core_impl.WorkQueue())
    with pytest.raises(ValueError, match="bad counter index"):
        ledger.move(*args)
    assert ledger.counts() == (0,) * 11


def test_running_set_follows_the_running_counter(core_impl):
    c = core_impl
    ledger = c.Ledger(c.WorkQueue())
    task = ledger.task(FakePool(), print, (), {})
    ledger.move(c.OUTSIDE, c.N_QUEUED, -1, task)
    assert ledger.running == set()
    ledger.move(c.N_QUEUED, c.N_RUNNING, -1, task)
    counts_now, running = ledger.snapshot()
    assert running == [task] and counts_now[c.N_RUNNING] == 1
    ledger.move(c.N_RUNNING, c.N_SUCCEEDED, -1, task)
    assert ledger.snapshot() == ((1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0), [])


def test_watch_and_flags(core_impl):
    c = core_impl
    ledger = c.Ledger(c.WorkQueue())
    assert (ledger.watch, ledger.closed, ledger.collecting) == (0, False, False)
    ledger.add_watch(1)
    assert ledger.move(c.OUTSIDE, c.N_QUEUED) is True
    ledger.add_watch(-1)
    assert ledger.move(c.N_QUEUED, c.N_CANCELLED) is False
    ledger.start_collecting()
    ledger.close()
    assert ledger.closed and ledger.collecting
    assert not ledger.slow and c.Ledger(c.WorkQueue(), True).slow


def test_idle_and_in_transit(core_impl):
    c = core_impl
    ledger = c.Ledger(c.WorkQueue())
    assert ledger.idle() and ledger.in_transit() == 0
    ledger.move(c.OUTSIDE, c.N_QUEUED)
    ledger.move(c.OUTSIDE, c.N_RETRYING)
    assert not ledger.idle() and ledger.in_transit() == 2
    ledger.move(c.N_QUEUED, c.N_RUNNING)
    ledger.move(c.N_RETRYING, c.N_NOT_STARTED)
    assert not ledger.idle() and ledger.in_transit() == 0
    ledger.move(c.N_RUNNING, c.N_SUCCEEDED)
    assert ledger.idle()


def test_one_submission_in_sample_every_is_sampled(core_impl):
    ledger = core_impl.Ledger(core_impl.WorkQueue())
    every = core_impl.SAMPLE_EVERY
    got = [ledger.sampled() for _ in range(3 * every)]
    assert got == ([True] + [False] * (every - 1)) * 3


def test_samples_fill_a_ring(core_impl):
    ledger = core_impl.Ledger(core_impl.WorkQueue())
    window = core_impl.SAMPLE_WINDOW
    waits, runs = ledger.latencies()
    assert len(waits) == len(runs) == window and all(math.isnan(x) for x in waits + runs)
    for i in range(window + 3):
        ledger.sample(float(i), -float(i))
    waits, runs = ledger.latencies()
    # The oldest three slots were overwritten by the newest samples.
    assert waits[:3] == [float(window), float(window + 1), float(window + 2)]
    assert waits[3] == 3.0 and runs[3] == -3.0


def test_pool_task_is_made_by_the_ledger(core_impl):
    with pytest.raises(TypeError, match="Ledger.task"):
        core_impl.PoolTask()
    ledger = core_impl.Ledger(core_impl.WorkQueue())
    pool = FakePool()
    task = ledger.task(pool, divmod, (7, 2), {}, "opts", "retry")
    assert isinstance(task, core_impl.WorkItem)
    assert (task.fn, task.args, task.kwargs, task.hooks, task.ledger) == (divmod, (7, 2), {},
                                                                       pool, ledger)
    assert (task.opts, task.retry, task.attempt, task.state, task.t_queued) == (
        "opts", "retry", 1, core_impl.TASK_QUEUED, 0.0)
    assert isinstance(task.future, core_impl.Future) and not task.future.done()
    assert ledger.counts() == (0,) * 11  # task() counts nothing


def test_fast_submit_counts_and_queues(core_impl):
    c = core_impl
    q = c.WorkQueue()
    ledger = c.Ledger(q)
    pool = FakePool()
    fut = ledger.submit(pool, divmod, (7, 2), {}, None)
    assert counts(c, ledger)["submitted"] == 1 and counts(c, ledger)["queued"] == 1
    task = q.get_nowait()
    assert task.future is fut and task.t_queued > 0  # the first one is sampled
    task.run()
    assert fut.result(0) == (3, 1)
    assert task.state == c.TASK_DONE
    got = counts(c, ledger)
    assert (got["queued"], got["running"], got["succeeded"]) == (0, 0, 1)
    waits, runs = ledger.latencies()
    assert waits[0] >= 0.0 and runs[0] >= 0.0 and math.isnan(waits[1])
    assert pool.calls == []


def test_fast_submit_refuses_without_counting(core_impl):
    c = core_impl
    q = c.WorkQueue(1)
    ledger = c.Ledger(q)
    pool = FakePool()
    with pytest.raises(TypeError, match="callable"):
        ledger.submit(pool, 42, (), {}, None)
    assert ledger.submit(pool, print, (), {}, None) is not None
    ledger.add_watch(1)
    assert ledger.submit(pool, print, (), {}, None) is None  # full
    # Counted only once queued (Ledger.admit): nothing to un-count, nothing to hear.
    assert pool.calls == []
    q.close()
    q.get_nowait()
    assert ledger.submit(pool, print, (), {}, None) is None  # queue closed
    ledger.close()
    assert ledger.submit(pool, print, (), {}, None) is None  # ledger closed
    got = counts(c, ledger)
    assert got["submitted"] == 1 and got["queued"] == 1 and got["rejected"] == 0


def test_run_hands_failures_and_cancellations_back(core_impl):
    c = core_impl
    q = c.WorkQueue()
    ledger = c.Ledger(q)
    pool = FakePool()
    boom = ValueError("boom")

    def fail():
        raise boom

    ledger.submit(pool, fail, (), {}, None)
    task = q.get_nowait()
    task.run()
    assert pool.calls == [("failed", task, boom)]
    assert ledger.snapshot() == ((1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0), [task])  # pool settles it

    pool.calls.clear()
    fut = ledger.submit(pool, print, (), {}, None)
    fut.cancel()
    task = q.get_nowait()
    task.run()
    assert pool.calls == [("not_run", task, False)]
    assert counts(c, ledger)["queued"] == 1  # still queued: _not_run moves it

    pool.calls.clear()
    ledger.start_collecting()
    ledger.submit(pool, print, (), {}, None)
    task = q.get_nowait()
    task.run()
    assert pool.calls == [("not_run", task, True)]  # started, handed back


def test_options_and_slow_ledgers_take_the_slow_path(core_impl):
    # A slow ledger: the pool is rate-limited or runs on a backend (Dask).
    c = core_impl
    for slow, opts in ((False, "opts"), (True, None)):
        ledger = c.Ledger(c.WorkQueue(), slow)
        pool = FakePool()
        task = ledger.task(pool, print, (), {}, opts)
        task.run()
        assert pool.calls == [("slow", task)]


def test_moves_are_atomic_under_threads(core_impl):
    """Every move keeps submitted == the sum of the states, whatever a reader sees."""
    c = core_impl
    ledger = c.Ledger(c.WorkQueue())
    stop = threading.Event()
    bad: list[tuple] = []
    path = [(c.OUTSIDE, c.N_QUEUED), (c.N_QUEUED, c.N_RUNNING),
            (c.N_RUNNING, c.N_RETRYING), (c.N_RETRYING, c.N_QUEUED),
            (c.N_QUEUED, c.N_RUNNING), (c.N_RUNNING, c.N_SUCCEEDED)]

    def mover() -> None:
        for _ in range(3000):
            for src, dst in path:
                ledger.move(src, dst)

    def reader() -> None:
        while not stop.is_set():
            got = ledger.counts()
            if got[0] != sum(got[1:8]) or min(got[1:4]) < 0:
                bad.append(got)

    threads = [threading.Thread(target=mover) for _ in range(4)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert not bad, bad[:3]
    assert ledger.counts()[:5] == (12000, 0, 0, 0, 12000)


def test_fast_submit_asks_for_a_worker_when_work_waits(core_impl):
    c = core_impl
    q = c.WorkQueue()
    ledger = c.Ledger(q)
    pool = FakePool()
    ledger.submit(pool, print, (), {}, None)
    assert pool.calls == []  # not bound to a pool's workers: never asks
    threads = {"worker-1"}
    q.bind_workers(threads, 2)
    ledger.submit(pool, print, (), {}, None)
    assert pool.calls == [("grow",)]  # 2 queued, 0 idle, 1 of 2 workers
    threads.add("worker-2")  # the live set is read, not a copy
    pool.calls.clear()
    ledger.submit(pool, print, (), {}, None)
    assert pool.calls == []  # at the maximum
    q.set_max_workers(3)
    ledger.submit(pool, print, (), {}, None)
    assert pool.calls == [("grow",)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_out_of_memory_is_a_memory_error(core_impl, run_py):
    """Ledgers made until the address space runs out: MemoryError, which a program can
    handle, not a C++ std::bad_alloc escaping the constructor and aborting the process
    (its vectors were filled with assign(), which Cython does not declare `except +`)."""
    proc = run_py(f"""
import importlib, os, resource
core = importlib.import_module({core_impl.__name__!r})
queue = core.WorkQueue(0)
with open("/proc/self/statm") as f:
    vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
ledgers = []
resource.setrlimit(resource.RLIMIT_AS, (vm + 8 * 1024 * 1024, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    while True:
        ledgers.append(core.Ledger(queue))
except MemoryError:
    ledgers.clear()
    print("MemoryError")
""")
    assert proc.returncode == 0, str(proc)
    assert proc.stdout.strip() == "MemoryError", str(proc)
