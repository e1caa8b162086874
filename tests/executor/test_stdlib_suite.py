"""tools/stdlib_tests.py runs CPython's own executor tests with fastpool's executor
swapped in; these check its pieces and the differences it excludes on purpose."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"


def _harness():
    spec = importlib.util.spec_from_file_location("stdlib_tests", TOOLS / "stdlib_tests.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_swap_puts_fastpool_in_the_stdlibs_place():
    code = textwrap.dedent(f"""
        exec(open({str(TOOLS / 'stdlib_swap.py')!r}).read(), {{"__name__": "swap"}})
        import concurrent.futures as cf, concurrent.futures.thread as t, fastpool, asyncio
        assert cf.ThreadPoolExecutor is t.ThreadPoolExecutor is fastpool.ThreadPoolExecutor

        async def main():
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, pow, 2, 5) == 32
            return type(loop._default_executor)
        assert asyncio.run(main()) is fastpool.ThreadPoolExecutor
        """)
    subprocess.run([sys.executable, "-I", "-c", code], check=True, timeout=60)


def test_each_intended_difference_names_an_issue_and_a_test_of_ours():
    harness = _harness()
    for test_id, (issue, why, ours, until) in harness.INTENDED.items():
        assert until > (3, 9), test_id
        assert issue.startswith(("gh-", "bpo-")) and why, test_id
        path, _, name = ours.partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), ours


def test_regrtest_summary_parsing():
    harness = _harness()
    out = textwrap.dedent("""\
        Warning -- threading._dangling was modified by test.test_asyncio.test_threads
        == Tests result: FAILURE ==

        1 test failed:
            test.test_concurrent_futures.test_shutdown

        2 tests altered the execution environment (env changed):
            test.test_asyncio.test_threads test.test_concurrent_futures.test_wait

        Total duration: 40.2 sec
        """)
    assert harness.listed(out, " failed:") == ["test.test_concurrent_futures.test_shutdown"]
    assert harness.env_changed(out) == {
        "test.test_asyncio.test_threads": ["threading._dangling"],
        "test.test_concurrent_futures.test_wait": []}


@pytest.mark.parametrize("run", range(3))
def test_cancel_futures_wait_false_either_outcome(run):
    """gh-116682: submit then shutdown(wait=False, cancel_futures=True) at once: the task
    either ran (printed) or was cancelled before it started, and the interpreter exits
    cleanly either way. (3.10/3.11's copy of the stdlib test insists that it ran.)"""
    code = textwrap.dedent("""
        import time
        from fastpool import ThreadPoolExecutor

        def sleep_and_print(t, msg):
            time.sleep(t)
            print(msg, flush=True)

        t = ThreadPoolExecutor()
        t.submit(sleep_and_print, .1, "apple")
        t.shutdown(wait=False, cancel_futures=True)
        """)
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert proc.stdout.strip() in ("apple", "")
