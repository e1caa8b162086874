"""A process that has created a subinterpreter (InterpreterPoolExecutor on 3.14, say)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import threading
    try:
        from concurrent import interpreters          # 3.14
        interpreters.create().close()
    except ImportError:
        try:
            import _interpreters as sub               # 3.13
        except ImportError:
            import _xxsubinterpreters as sub          # 3.10-3.12
        sub.destroy(sub.create())
    from fastpool import _core

    # Contended put/get: waiters take the queue's mutex through the hooks that release
    # the GIL only if the thread holds it (fp_queue.h lock_politely).
    for maxsize in (0, 64):
        q = _core.WorkQueue(maxsize)
        per, n, got = 5000, 4, []

        def produce():
            for i in range(per):
                q.put(i)

        def consume():
            k = 0
            try:
                while True:
                    q.get()
                    k += 1
            except _core.QueueClosed:
                got.append(k)

        ps = [threading.Thread(target=produce) for _ in range(n)]
        cs = [threading.Thread(target=consume) for _ in range(n)]
        for t in ps + cs:
            t.start()
        for t in ps:
            t.join()
        q.close()
        for t in cs:
            t.join()
        assert sum(got) == per * n, got
    print("ok")
    """)


def test_native_queue_after_a_subinterpreter_was_created(run_py):
    """Creating a subinterpreter makes PyGILState_Check() answer 1 for every thread: the
    core used it to decide whether to release the GIL before blocking on a mutex, and so
    called PyEval_SaveThread without the GIL (a crash: segfault or fatal error)."""
    pytest.importorskip("fastpool._core")
    probe = subprocess.run([sys.executable, "-c", "import _xxsubinterpreters"],
                           capture_output=True)
    has_sub = probe.returncode == 0 or sys.version_info >= (3, 13)
    if not has_sub:
        pytest.skip("this Python has no subinterpreter module")
    for _ in range(3):
        # run_py: -I and the package under test (a source checkout must not shadow it)
        proc = run_py(SCRIPT, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", str(proc)[-3000:]
