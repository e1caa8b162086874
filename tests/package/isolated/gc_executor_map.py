"""An executor dropped (`del`) while one of its map() iterators is still live.

The iterator must not keep the executor alive (issue 10 point 2: it did, so the
workers never exited and joining them hung). Expected, as the stdlib: the executor is
freed, the work already submitted still runs and the iterator yields it, then the
worker threads exit. With buffersize (fastpool on every Python, the stdlib from 3.14),
inputs not submitted yet are never taken: the iterator ends after the submitted ones,
as the stdlib's (its comment: "the executor can be garbage collected independently of
the result_iterator closure").
argv[1]: the module to take ThreadPoolExecutor from.
"""
import faulthandler
import gc
import importlib
import inspect
import os
import sys
import threading
import weakref

_root = os.environ.get("FASTPOOL_TEST_PATH")  # the package under test (tests/conftest.py)
if _root and _root not in sys.path:
    sys.path.insert(0, _root)

faulthandler.dump_traceback_later(50, exit=True)

ThreadPoolExecutor = importlib.import_module(sys.argv[1]).ThreadPoolExecutor
lazy = "buffersize" in inspect.signature(ThreadPoolExecutor.map).parameters


def start(gate, **options):
    def f(i):
        assert gate.wait(30), "gate never opened"
        return i * i

    ex = ThreadPoolExecutor(max_workers=2)
    it = ex.map(f, range(10), **options)
    return weakref.ref(ex), it, list(ex._threads)


def check(name, options, expected):
    gate = threading.Event()
    ref, it, threads = start(gate, **options)
    try:
        gc.collect()
        assert ref() is None, f"{name}: the map iterator keeps its executor alive"
    finally:
        gate.set()  # a failure must not leave the workers blocked (exit would wait)
    got = list(it)
    assert got == expected, (name, got)
    for t in threads:
        t.join(timeout=20)
        assert not t.is_alive(), f"{name}: worker {t.name} still running"
    print(f"ok {name}", flush=True)


check("eager", {}, [i * i for i in range(10)])
if lazy:
    check("buffersize", {"buffersize": 3}, [i * i for i in range(3)])
