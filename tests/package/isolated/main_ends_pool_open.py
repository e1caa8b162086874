"""The main thread ends while a pool is still open (idle, busy, or used from asyncio).

Expected: a clean exit 0, no KeyboardInterrupt, no traceback, nothing on stderr, and
the running task completes first.
argv[1]: the module to take ThreadPoolExecutor from.
"""
import asyncio
import faulthandler
import importlib
import os
import sys
import time

_root = os.environ.get("FASTPOOL_TEST_PATH")  # the package under test (tests/conftest.py)
if _root and _root not in sys.path:
    sys.path.insert(0, _root)

faulthandler.dump_traceback_later(50, exit=True)

ThreadPoolExecutor = importlib.import_module(sys.argv[1]).ThreadPoolExecutor

idle = ThreadPoolExecutor(4)
for f in [idle.submit(abs, -i) for i in range(20)]:
    f.result()

busy = ThreadPoolExecutor(1)


def slow():
    time.sleep(0.3)
    print("slow task finished", flush=True)


busy.submit(slow)


async def main():
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(2))
    return await loop.run_in_executor(None, pow, 2, 8)


print("asyncio", asyncio.run(main()), flush=True)
print("main thread ends", flush=True)
