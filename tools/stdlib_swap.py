"""Put fastpool's ThreadPoolExecutor in the stdlib's place, at interpreter start-up.

Run by the .pth file that tools/stdlib_tests.py writes into the venv's site-packages,
only when FASTPOOL_STDLIB_SWAP names this file: so the swap also happens in every child
interpreter the stdlib's tests start (regrtest's -j workers, script_helper's
`python -I -c ...` runs), which inherit the environment. Everything that looks
`ThreadPoolExecutor` up at call time then gets fastpool's: the tests' executor mixins,
`asyncio`'s default executor, and on 3.14 `InterpreterPoolExecutor`, whose module is
imported lazily and so subclasses fastpool's executor.
"""

import os

# Test modules this Python lacks, taken from a distribution's test-suite package
# (tools/stdlib_tests.py --fetch-tests): served as part of the stdlib's `test` package.
_extra = os.environ.get("FASTPOOL_STDLIB_TESTS_EXTRA")
if _extra:
    import test

    test.__path__.append(_extra)

import concurrent.futures
import concurrent.futures.thread

import fastpool

concurrent.futures.ThreadPoolExecutor = fastpool.ThreadPoolExecutor
concurrent.futures.thread.ThreadPoolExecutor = fastpool.ThreadPoolExecutor  # type: ignore[misc]

# The process case (tools/stdlib_tests.py --processes): fastpool's ProcessPoolExecutor
# in the stdlib's place too. Only then: the thread case runs exactly as before.
if os.environ.get("FASTPOOL_STDLIB_SWAP_PROCESS"):
    import concurrent.futures.process

    concurrent.futures.ProcessPoolExecutor = fastpool.ProcessPoolExecutor  # type: ignore[misc]
    concurrent.futures.process.ProcessPoolExecutor = fastpool.ProcessPoolExecutor  # type: ignore[misc]
