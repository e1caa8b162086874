"""An executor dropped (`del`, garbage collected) while work is still queued.

Expected: the queued work finishes, the worker threads exit, the executor object
is freed (nothing keeps it alive), and a second, cyclic-garbage case behaves the same.
argv[1]: the module to take ThreadPoolExecutor from.
"""
import faulthandler
import gc
import importlib
import os
import sys
import threading
import time
import weakref

_root = os.environ.get("FASTPOOL_TEST_PATH")  # the package under test (tests/conftest.py)
if _root and _root not in sys.path:
    sys.path.insert(0, _root)

faulthandler.dump_traceback_later(50, exit=True)

ThreadPoolExecutor = importlib.import_module(sys.argv[1]).ThreadPoolExecutor


def start_work(cyclic):
    gate = threading.Event()
    ex = ThreadPoolExecutor(max_workers=2)
    fs = [ex.submit(gate.wait, 30)] + [ex.submit(pow, i, 2) for i in range(100)]
    threads = list(ex._threads)
    if cyclic:
        ex.self_ref = ex  # only the cycle collector can free it
    return weakref.ref(ex), fs, threads, gate


for cyclic in (False, True):
    ref, fs, threads, gate = start_work(cyclic)
    gc.collect()
    assert ref() is None, f"executor kept alive (cyclic={cyclic}): {gc.get_referrers(ref())}"
    gate.set()
    results = [f.result(timeout=20) for f in fs]
    assert results == [True] + [i * i for i in range(100)], results
    for t in threads:
        t.join(timeout=20)
        assert not t.is_alive(), f"worker {t.name} still running after its executor was freed"
    print(f"ok cyclic={cyclic}", flush=True)

# Work submitted by the last reference's owner, then dropped at once.
done = []
ThreadPoolExecutor(max_workers=1).submit(lambda: (time.sleep(0.1), done.append(1)))
gc.collect()
deadline = time.monotonic() + 20
while not done and time.monotonic() < deadline:
    time.sleep(0.01)
assert done == [1]
print("ok dropped", flush=True)
