"""The main thread ends with work still queued and the pool never shut down.

Expected: every queued task runs, the interpreter exits 0 without hanging.
argv[1]: the module to take ThreadPoolExecutor from (fastpool or concurrent.futures).
"""
import faulthandler
import importlib
import os
import sys
import threading
import time

_root = os.environ.get("FASTPOOL_TEST_PATH")  # the package under test (tests/conftest.py)
if _root and _root not in sys.path:
    sys.path.insert(0, _root)

faulthandler.dump_traceback_later(50, exit=True)  # a hang dumps stacks, then exits 1

ThreadPoolExecutor = importlib.import_module(sys.argv[1]).ThreadPoolExecutor
N = 200
lock = threading.Lock()


def task(i):
    time.sleep(0.001)
    with lock:
        print(f"done {i}", flush=True)


ex = ThreadPoolExecutor(max_workers=3)
for i in range(N):
    ex.submit(task, i)
# A second pool with queued work behind a slow task, and a third that is idle.
ex2 = ThreadPoolExecutor(max_workers=1)
ex2.submit(time.sleep, 0.3)
for i in range(N, N + 20):
    ex2.submit(task, i)
ex3 = ThreadPoolExecutor(max_workers=2)
ex3.submit(int).result()
print("main thread ends", flush=True)
