"""A short, thread-heavy stress of the native core, for sanitizer builds (tools/sanitize.sh).

Exercises every native entry point from many threads at once: the executor (submit from
8 threads to 16 workers, random faults: raising tasks, BaseException, cancellation,
raising callbacks, tasks submitting to their own pool, huge results), map, the bare
WorkQueue (bounded put/get with timeouts, close racing producers, drain, dealloc with items
inside), shutdown(cancel_futures=True) with work queued, the Pool's native bookkeeping
(fast submits from 4 threads, retries, try_submit on a full queue, stats() readers, a timed
shutdown in the middle), and os.fork() while busy.

It checks its own results (every future in exactly one state, every queue item received
exactly once) and prints the counts, so a sanitizer run also shows the workload was real.
Usage: python tools/sanitize_stress.py [--scale X] [--no-fork] [--timeout S]
(exit 0 = all checks passed; a hang prints every thread's stack after --timeout seconds)
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import faulthandler
import logging
import os
import random
import sys
import threading
import time

import fastpool
from fastpool import _pick_core

core = _pick_core.core
faults: collections.Counter[str] = collections.Counter()


class Boom(Exception):
    pass


class BaseBoom(BaseException):
    pass


def executor_stress(n_per_thread: int, seed: int) -> int:
    pool = fastpool.ThreadPoolExecutor(16)
    records: list[tuple[str, cf.Future, int]] = []
    children: list[tuple[int, cf.Future]] = []
    lock = threading.Lock()
    kinds = ("ok", "raise", "base", "cancel", "callback", "child", "big", "sleep")

    def task(kind: str, i: int):
        if kind == "raise":
            raise Boom(i)
        if kind == "base":
            raise BaseBoom(i)
        if kind == "child":
            # Submit to our own pool, never wait for it here: with every worker waiting
            # for a child queued behind them, any pool deadlocks (the stdlib's too).
            child = pool.submit(abs, -i)
            with lock:
                children.append((i, child))
            return i
        if kind == "big":
            return bytes(1 << 20)[:1] and i
        if kind == "sleep":
            time.sleep(0.0002)
        return i

    def bad_callback(f):
        raise Boom("callback")

    def submitter(k: int) -> None:
        rng = random.Random(seed + k)
        local = []
        for i in range(n_per_thread):
            kind = rng.choice(kinds)
            f = pool.submit(task, kind, i)
            if kind == "cancel":
                f.cancel()
            elif kind == "callback":
                f.add_done_callback(bad_callback)
            local.append((kind, f, i))
        with lock:
            records.extend(local)

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done, not_done = cf.wait([f for _, f, _ in records], timeout=300)
    assert not not_done, f"{len(not_done)} futures never finished"
    states = collections.Counter()
    for kind, f, i in records:
        faults[kind] += 1
        if f.cancelled():
            assert kind == "cancel", kind
            states["cancelled"] += 1
        elif f.exception() is not None:
            assert kind in ("raise", "base"), (kind, f.exception())
            states["exception"] += 1
        else:
            assert f.result() == i, (kind, i, f.result())
            states["result"] += 1
    assert sum(states.values()) == len(records)
    assert all(f.result(60) == i for i, f in children)
    assert sum(pool.map(abs, range(-2000, 0))) == sum(range(1, 2001))
    pool.shutdown(wait=True)
    print(f"executor: {len(records)} tasks (+{len(children)} children), "
          f"states {dict(states)}", flush=True)
    return len(records) + len(children)


def pool_stress(n_per_thread: int, seed: int) -> int:
    """fastpool.Pool: the Ledger's fast path and the Python slow paths racing."""
    pool = fastpool.Pool(4, queue_size=64,
                         retry=fastpool.Retry(attempts=2, backoff=0.0005, retry_on=Boom))
    futures: list[cf.Future] = []
    lock = threading.Lock()
    stop = threading.Event()
    bad: list[object] = []

    def task(i: int, r: float) -> int:
        if r < 0.1:
            raise Boom(i)
        if r < 0.12:
            raise KeyError(i)
        return i

    def producer(p: int) -> None:
        rng = random.Random(seed + p)
        for i in range(n_per_thread):
            try:
                if rng.random() < 0.2:
                    fut = pool.try_submit(task, i, rng.random())
                    if fut is None:
                        continue
                else:
                    fut = pool.submit(task, i, rng.random())
            except RuntimeError:
                return  # shut down under us
            with lock:
                futures.append(fut)

    def reader() -> None:
        while not stop.is_set():
            s = pool.stats()
            if s.submitted != (s.succeeded + s.failed + s.cancelled + s.not_started
                               + s.queued + s.running + s.retrying):
                bad.append(s)
            time.sleep(0.001)

    threads = [threading.Thread(target=producer, args=(p,)) for p in range(4)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    time.sleep(0.05)
    report = pool.shutdown(timeout=0.05)
    for t in threads[:-1]:
        t.join()
    stop.set()
    threads[-1].join()
    assert not bad, bad[:3]
    for fut in futures:
        try:
            fut.result(60)
        except (Boom, KeyError, cf.CancelledError):
            pass
    s = pool.stats()
    assert s.submitted == len(futures) == s.succeeded + s.failed + s.cancelled + s.not_started
    assert len(report.not_started) == s.not_started
    print(f"pool: {len(futures)} tasks, {s.succeeded} ok, {s.failed} failed, "
          f"{s.retried} retried, {s.not_started} handed back, {s.rejected} rejected",
          flush=True)
    return len(futures)


def pool_map_stress(n: int, seed: int) -> int:
    """Pool.map's native engine: maps with failures and retries from several threads,
    the Ledger read all along, then a timed shutdown handing back what did not start."""
    pool = fastpool.Pool(4, retry=fastpool.Retry(attempts=2, backoff=0.0, retry_on=Boom))
    rng = random.Random(seed)
    fails = {i for i in range(n) if rng.random() < 0.05}
    stop = threading.Event()
    bad: list[object] = []

    def task(i: int) -> int:
        if i in fails:
            raise Boom(i)
        return i

    def consumer(k: int) -> None:
        try:
            for _ in pool.map(task, range(n), ordered=k % 2 == 0, chunksize=1 + k,
                              return_exceptions=True, buffersize=None if k else 64):
                pass
        except (RuntimeError, cf.CancelledError):
            pass  # shut down under it

    def reader() -> None:
        while not stop.is_set():
            s = pool.stats()
            if s.submitted != (s.succeeded + s.failed + s.cancelled + s.not_started
                               + s.queued + s.running + s.retrying):
                bad.append(s)
            time.sleep(0.001)

    threads = [threading.Thread(target=consumer, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    end = time.monotonic() + 30
    while pool.stats().succeeded < n // 4 and time.monotonic() < end:
        time.sleep(0.001)  # under way (a sanitizer build starts slowly)
    report = pool.shutdown(timeout=0.02)
    for t in threads[:-1]:
        t.join()
    while pool.stats().running:
        time.sleep(0.01)
    stop.set()
    threads[-1].join()
    assert not bad, bad[:3]
    s = pool.stats()
    assert s.submitted == s.succeeded + s.failed + s.cancelled + s.not_started, s
    assert len(report.not_started) == s.not_started
    print(f"pool map: {s.submitted} items, {s.succeeded} ok, {s.failed} failed, "
          f"{s.retried} retried, {s.not_started} handed back", flush=True)
    return s.submitted


def shutdown_cancel_stress(rounds: int) -> int:
    n = 0
    for _ in range(rounds):
        pool = fastpool.ThreadPoolExecutor(4)
        gate = threading.Event()
        for _ in range(4):
            pool.submit(gate.wait, 60)
        fs = [pool.submit(pow, i, 2) for i in range(500)]
        pool.shutdown(wait=False, cancel_futures=True)
        gate.set()
        pool.shutdown(wait=True)
        assert all(f.done() for f in fs)
        n += len(fs) + 4
        faults["shutdown_cancel"] += sum(f.cancelled() for f in fs)
    print(f"shutdown(cancel_futures=True): {rounds} pools, {n} tasks", flush=True)
    return n


def queue_stress(items_per_producer: int) -> int:
    """Bounded queue, 4 producers with timeouts, 4 consumers, close racing the producers."""
    total = 0
    for maxsize in (0, 3, 64):
        q = core.WorkQueue(maxsize)
        got: list[int] = []
        got_lock = threading.Lock()
        accepted = collections.Counter()

        def producer(p: int) -> None:
            for i in range(items_per_producer):
                try:
                    if q.put((p, i), timeout=5):
                        accepted[p] += 1
                    else:
                        faults["put_timeout"] += 1
                except core.QueueClosed:
                    faults["put_closed"] += 1
                    return

        def consumer() -> None:
            mine = []
            while True:
                try:
                    mine.append(q.get(timeout=5))
                except core.QueueClosed:
                    break
                except core.QueueEmpty:
                    faults["get_timeout"] += 1
            with got_lock:
                got.extend(mine)

        ps = [threading.Thread(target=producer, args=(p,)) for p in range(4)]
        cs = [threading.Thread(target=consumer) for _ in range(4)]
        for t in ps + cs:
            t.start()
        time.sleep(0.01)
        q.close()  # races the producers: what was accepted must still come out
        for t in ps + cs:
            t.join()
        assert len(got) == len(set(got)) == sum(accepted.values()), (len(got), accepted)
        total += len(got)
        # dealloc with items inside, and drain
        q2 = core.WorkQueue(maxsize)
        for i in range(min(maxsize or 2000, 2000)):
            q2.put([i])
        assert len(q2.drain()) == min(maxsize or 2000, 2000)
        q3 = core.WorkQueue(maxsize)
        for i in range(min(maxsize or 2000, 2000)):
            q3.put([i])
        del q3
    print(f"queue: {total} items through bounded/unbounded queues with close races", flush=True)
    return total


def fork_stress(forks: int) -> int:
    if not hasattr(os, "fork"):
        return 0
    pool = fastpool.ThreadPoolExecutor(4)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            for f in [pool.submit(divmod, i, 3) for i in range(300)]:
                f.result(60)

    t = threading.Thread(target=busy)
    t.start()
    for _ in range(forks):
        pid = os.fork()
        if pid == 0:
            code = 0 if pool.submit(pow, 2, 5).result(30) == 32 else 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        faults["fork"] += 1
    stop.set()
    t.join()
    pool.shutdown()
    print(f"fork: {forks} forks while busy, child pools usable", flush=True)
    return forks


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--no-fork", action="store_true")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="dump every thread's stack and exit if still running after this")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    seed = random.randrange(1 << 30)
    # Raising callbacks are logged by design; thousands of tracebacks would drown the
    # sanitizer reports this is run for.
    logging.getLogger("concurrent.futures").setLevel(logging.CRITICAL)
    print(f"fastpool native={fastpool.NATIVE} core={core.__file__} seed={seed}", flush=True)
    t0 = time.monotonic()
    tasks = executor_stress(int(2000 * args.scale), seed)
    tasks += pool_stress(int(2000 * args.scale), seed)
    tasks += pool_map_stress(int(20000 * args.scale), seed)
    tasks += shutdown_cancel_stress(max(1, int(10 * args.scale)))
    items = queue_stress(int(5000 * args.scale))
    forks = 0 if args.no_fork else fork_stress(max(1, int(10 * args.scale)))
    print(f"TOTAL tasks={tasks} queue_items={items} forks={forks} "
          f"faults={dict(sorted(faults.items()))} in {time.monotonic() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
