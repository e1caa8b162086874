"""Pool(backend=<dask.distributed.Client>): the Pool API with its calls run on Dask.

One in-process cluster (1 worker, 2 threads) serves the whole module: starting one takes
~0.1 s but stopping one takes seconds, and the leaked-thread check in conftest.py would
see its threads if a test made it. A module-scoped fixture is created before the first
test's thread snapshot and closed after the last test's check; Dask's threads started
lazily during a test (worker threads, offload and callback threads) are daemon threads,
which the check ignores. Dask pickles every call, even in-process, so the remote
functions below are module-level and find their gates by name (the cluster shares this
process's memory: a test can open a gate a remote call is waiting on).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from concurrent.futures import CancelledError

import pytest

distributed = pytest.importorskip("distributed", reason="distributed is in the test extra")

from pool_support import PROMPT, check_invariant, wait_until  # noqa: E402

from fastpool import CancelToken, DeadlineExceeded, Pool, QueueFull, Retry  # noqa: E402

# -- remote functions (module-level: Dask pickles them by reference) -----------------

_lock = threading.Lock()
_release = threading.Event()  # opened at the end of every test
_active = [0]  # gated calls running on the cluster now
_calls: collections.Counter[str] = collections.Counter()  # calls made, by tag


def gated(value=None):
    """Run on the cluster until the test opens the gate."""
    with _lock:
        _active[0] += 1
    try:
        assert _release.wait(PROMPT * 2), "gate never opened"
        return value
    finally:
        with _lock:
            _active[0] -= 1


def square(x):
    return x * x


def where():
    """The address of the Dask worker running this (ValueError outside of one)."""
    return distributed.get_worker().address


def tagged(x, *, key=None, workers=None):
    # `key` and `workers` are also keywords of client.submit: they must reach the call.
    return (x, key, workers)


def counted(tag, value=None):
    with _lock:
        _calls[tag] += 1
    return value


def flaky(tag, failures):
    """Fail with KeyError the first `failures` calls for this tag, then succeed."""
    with _lock:
        _calls[tag] += 1
        n = _calls[tag]
    if n <= failures:
        raise KeyError(f"{tag} attempt {n}")
    return n


def broken(exc_type):
    raise exc_type("remote failure")


# -- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    # dashboard_address=":0", not None: None still binds the scheduler's HTTP server to
    # port 8787, and when another cluster has it Dask warns (an error here).
    c = distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                           dashboard_address=":0")
    yield c
    c.close()


@pytest.fixture
def make_pool(client):
    """make_pool(**kw) -> Pool on the cluster; at the end the gate opens, the pools shut
    down, and the cluster is idle again (no gated call holds one of its threads)."""
    pools: list[Pool] = []
    _release.clear()
    _calls.clear()

    def make(**kwargs) -> Pool:
        pool = Pool(backend=client, **kwargs)
        pools.append(pool)
        return pool

    yield make
    _release.set()
    for pool in pools:
        pool.shutdown(wait=True, timeout=PROMPT)
    wait_until(lambda: _active[0] == 0, what="gated calls to end")
    wait_until(lambda: not any(client.processing().values()), what="an idle cluster")


def processing(client) -> int:
    """Tasks the scheduler has running or assigned to a worker."""
    return sum(len(keys) for keys in client.processing().values())


# -- tests ----------------------------------------------------------------------------

def test_submit_map_and_asubmit(make_pool, client):
    pool = make_pool()
    assert pool.workers == 2  # the cluster's threads
    # Plain tasks (the native fast path on threads) and tasks with options run remotely.
    address = list(client.nthreads())[0]
    assert pool.submit(where).result(PROMPT) == address
    assert pool.schedule(where, deadline=PROMPT).result(PROMPT) == address
    assert list(pool.map(lambda _: where(), range(3))) == [address] * 3
    assert pool.submit(pow, 2, 10).result(PROMPT) == 1024
    assert pool.submit(tagged, 1, key="k", workers="w").result(PROMPT) == (1, "k", "w")
    assert pool.schedule(square, (7,), key="seven").result(PROMPT) == 49
    assert list(pool.map(square, range(20))) == [x * x for x in range(20)]
    assert list(pool.map(square, range(20), chunksize=3)) == [x * x for x in range(20)]
    seen = []
    out = list(pool.map(square, range(20), ordered=False, progress=seen.append))
    assert sorted(out) == [x * x for x in range(20)]
    assert seen and seen[-1].succeeded == seen[-1].submitted

    async def main():
        return await pool.asubmit(square, 9)

    assert asyncio.run(main()) == 81
    assert pool.join(PROMPT)  # a future is settled just before its task is counted
    s = pool.stats()
    check_invariant(s)
    # 5 submits + 3 + 20 + 7 chunks + 20 maps + 1 asubmit, all succeeded.
    assert (s.submitted, s.succeeded, s.failed) == (56, 56, 0)


def scheduler_tasks(dask_scheduler):
    return len(dask_scheduler.tasks)


def test_remote_exceptions_keep_their_type(make_pool, client):
    pool = make_pool(workers=1)
    errors = []
    for exc_type in (KeyError, ValueError, ZeroDivisionError):
        errors.append(pool.submit(broken, exc_type).exception(PROMPT))
        assert type(errors[-1]) is exc_type and "remote failure" in str(errors[-1])
    # Holding on to the errors (their tracebacks) does not pin the calls' keys on the
    # cluster: the pool released every Dask future it made.
    wait_until(lambda: client.run_on_scheduler(scheduler_tasks) == 0,
               what="the scheduler to forget the failed calls")
    # A call Dask cannot ship (a lock does not pickle) fails its future; the pool goes on.
    err = pool.submit(counted, "x", threading.Lock()).exception(PROMPT)
    assert isinstance(err, TypeError)
    assert pool.submit(square, 3).result(PROMPT) == 9
    s = pool.stats()
    check_invariant(s)
    assert (s.failed, s.succeeded, s.dead_lettered) == (4, 1, 0)


def test_retries_and_dead_letters(make_pool):
    retry = Retry(attempts=3, backoff=0.01, jitter=0, retry_on=KeyError)
    pool = make_pool(retry=retry)
    # Fails twice remotely, succeeds on the third (last) attempt: each attempt is a new
    # Dask task (pure=False), never a cached failure.
    assert pool.submit(flaky, "twice", 2).result(PROMPT) == 3
    # Always failing: three attempts, then a dead letter with the remote error.
    err = pool.schedule(flaky, ("always", 99), key="rec-1").exception(PROMPT)
    assert isinstance(err, KeyError)
    # Not matching retry_on: one attempt only.
    assert isinstance(pool.submit(broken, ValueError).exception(PROMPT), ValueError)
    assert pool.join(PROMPT)
    assert _calls["twice"] == 3 and _calls["always"] == 3
    letters = pool.dead_letters.drain()
    assert [(d.key, d.attempts, type(d.error)) for d in letters] == [
        ("rec-1", 3, KeyError), (None, 1, ValueError)]
    s = pool.stats()
    check_invariant(s)
    assert (s.succeeded, s.failed, s.retried, s.dead_lettered) == (1, 2, 4, 2)


def test_backpressure_bounds_the_calls_in_flight(make_pool, client):
    pool = make_pool(workers=2, queue_size=2)
    running = [pool.submit(gated, i) for i in range(2)]
    wait_until(lambda: _active[0] == 2, what="two calls on the cluster")
    queued = [pool.submit(gated, i) for i in range(2, 4)]
    # Two in flight on the cluster (the dispatchers), two queued here: the queue is full.
    assert pool.try_submit(gated, 4) is None
    with pytest.raises(QueueFull):
        pool.schedule(gated, (5,), timeout=0.05)
    time.sleep(0.1)
    assert _active[0] == 2 and processing(client) == 2  # nothing more reached Dask
    s = pool.stats()
    check_invariant(s)
    assert (s.running, s.queued, s.rejected) == (2, 2, 2)
    # A blocking submit waits for room, then goes through.
    blocked = []
    t = threading.Thread(target=lambda: blocked.append(pool.submit(square, 6)))
    t.start()
    time.sleep(0.05)
    assert not blocked
    _release.set()
    t.join(PROMPT)
    assert [f.result(PROMPT) for f in running + queued] == [0, 1, 2, 3]
    assert blocked[0].result(PROMPT) == 36
    assert pool.join(PROMPT)
    s = pool.stats()
    check_invariant(s)
    assert (s.submitted, s.succeeded, s.rejected) == (5, 5, 2)


def test_cancelling_queued_tasks(make_pool):
    pool = make_pool(workers=1)
    first = pool.submit(gated, "first")
    wait_until(lambda: _active[0] == 1, what="the first call")
    # Queued behind it: cancelled by the caller, or by the caller's token.
    queued = pool.submit(counted, "queued")
    token = CancelToken()
    by_token = pool.schedule(counted, ("by-token",), token=token)
    after = pool.submit(counted, "after")
    assert queued.cancel()
    token.cancel("not needed")
    assert by_token.cancelled()
    _release.set()
    assert first.result(PROMPT) == "first"
    assert after.result(PROMPT) is None
    assert pool.join(PROMPT)
    assert _calls == {"after": 1}  # the cancelled ones never reached the cluster
    s = pool.stats()
    check_invariant(s)
    assert (s.succeeded, s.cancelled) == (2, 2)


def test_token_cancels_a_running_remote_call(make_pool, client):
    pool = make_pool(workers=1)
    token = CancelToken()
    fut = pool.schedule(gated, token=token)
    wait_until(lambda: _active[0] == 1 and processing(client) == 1, what="the remote call")
    token.cancel("stop")
    with pytest.raises(CancelledError):
        fut.result(PROMPT)
    # The Dask future is cancelled: the scheduler forgets the call while the remote
    # function is still blocked in the gate.
    wait_until(lambda: processing(client) == 0, what="the scheduler to drop the call")
    assert _active[0] == 1
    s = pool.stats()
    check_invariant(s)
    assert (s.cancelled, s.running) == (1, 0)


def test_deadline_on_a_long_remote_task(make_pool, client):
    pool = make_pool(workers=1)
    t0 = time.monotonic()
    fut = pool.schedule(gated, deadline=0.2)
    with pytest.raises(DeadlineExceeded):
        fut.result(PROMPT)
    assert time.monotonic() - t0 < 5
    wait_until(lambda: processing(client) == 0, what="the scheduler to drop the call")
    assert _active[0] == 1  # still blocked remotely, but no longer the pool's
    # The dispatcher is free again: the next task runs on the cluster's other thread.
    assert pool.submit(square, 5).result(PROMPT) == 25
    s = pool.stats()
    check_invariant(s)
    assert (s.failed, s.succeeded, s.running) == (1, 1, 0)


def test_timed_shutdown_reports_and_cancels_remote_calls(make_pool, client):
    pool = make_pool(workers=2)
    running = [pool.submit(gated, i) for i in range(2)]
    wait_until(lambda: _active[0] == 2, what="two calls on the cluster")
    queued = [pool.schedule(counted, ("late",), key=i) for i in range(3)]
    t0 = time.monotonic()
    report = pool.shutdown(timeout=0.2)
    assert 0.2 <= time.monotonic() - t0 < 5
    assert report.timed_out and report.completed == 0
    assert sorted(t.args for t in report.still_running) == [(0,), (1,)]
    assert sorted(t.key for t in report.not_started) == [0, 1, 2]
    assert all(t.attempts == 0 for t in report.not_started)
    for fut in running + queued:
        with pytest.raises(CancelledError):
            fut.result(PROMPT)
    wait_until(lambda: processing(client) == 0, what="the scheduler to drop the calls")
    assert _calls["late"] == 0
    wait_until(lambda: pool.stats().running == 0, what="the dispatchers to settle")
    s = pool.stats()
    check_invariant(s)
    assert (s.cancelled, s.not_started) == (2, 3)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(square, 1)


def test_options_that_cannot_run_remotely(client):
    with pytest.raises(ValueError, match="register_plugin"):
        Pool(backend=client, initializer=print)
    with pytest.raises(ValueError, match="copy_context"):
        Pool(backend=client, copy_context=True)
    with pytest.raises(TypeError, match=r"fastpool\[dask\]"):
        Pool(backend=client.cluster)
    closed = distributed.Client(client.scheduler.address)
    closed.close()
    with pytest.raises(ValueError, match="running Client"):
        Pool(backend=closed)
    # Workers are local dispatchers: any count is fine, the default is the cluster's.
    pool = Pool(backend=client, workers=5)
    assert pool.workers == 5
    pool.shutdown()


def test_fail_fast_group_cancels_the_rest(make_pool):
    pool = make_pool(workers=1)
    with pytest.raises(ValueError, match="remote failure"):
        with pool.group(fail_fast=True) as group:
            group.submit(broken, ValueError)
            rest = [group.submit(counted, "rest") for _ in range(3)]
    assert all(f.cancelled() for f in rest)
    assert _calls["rest"] == 0
    assert pool.join(PROMPT)
    s = pool.stats()
    check_invariant(s)
    assert (s.failed, s.cancelled) == (1, 3)


def test_closing_the_client_fails_tasks_instead_of_hanging(make_pool, client):
    own = distributed.Client(client.scheduler.address)
    pool = Pool(backend=own, workers=1)
    try:
        fut = pool.submit(gated)
        wait_until(lambda: _active[0] == 1, what="the remote call")
        queued = pool.submit(square, 2)
        own.close()
        # Dask cancels the futures of a closed client and refuses new calls: both tasks
        # fail (not cancelled: nobody cancelled them here), none hangs.
        assert isinstance(fut.exception(PROMPT), CancelledError)
        assert isinstance(queued.exception(PROMPT), Exception)
        assert not fut.cancelled() and not queued.cancelled()
        assert pool.join(PROMPT)
        s = pool.stats()
        check_invariant(s)
        assert (s.failed, s.running, s.queued) == (2, 0, 0)
    finally:
        _release.set()
        pool.shutdown(timeout=PROMPT)
