"""The Pool's parts (fastpool/pool/): each resets itself after fork, and the package
hides no import cycle (no imports inside functions)."""

import ast
import threading
from pathlib import Path

import fastpool
from fastpool import CancelToken
from fastpool.deadletter import DeadLetter, DeadLetterQueue
from fastpool.pool._pacing import pacer

POOL_DIR = Path(fastpool.__file__).parent / "pool"


def _held(lock):
    # A lock another thread held at fork time: in the child nobody will release it.
    assert lock.acquire(timeout=1)
    return lock


def test_token_resets_its_own_lock_after_fork():
    token = CancelToken()
    token.wait(0)  # creates its event
    _held(token._lock)
    token._reset_after_fork()
    assert token.cancel("child") and token.wait(0)


def test_dead_letter_queue_resets_its_own_lock_after_fork():
    letters = DeadLetterQueue()
    _held(letters._cond)
    letters._reset_after_fork()
    letters.put(DeadLetter("k", print, (), {}, ValueError(), 1, 0.0))
    assert [d.key for d in letters.drain()] == ["k"]


def test_pacer_resets_its_own_lock_after_fork():
    p = pacer((1000.0, 5))
    _held(p._lock)
    p.reset_after_fork()
    assert p.reserve() <= 0.0


def test_pool_package_imports_at_top_level_only():
    # An import inside a function hides a cycle (pool <-> _pool_map used to).
    for path in sorted(POOL_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested = [n for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom))
                          and not (isinstance(n, ast.Import) and n.names[0].name == "_thread")
                          # an optional dependency, imported when asked for (progress=True)
                          and not (isinstance(n, ast.ImportFrom) and n.module == "tqdm.auto")
                          # multiprocessing, loaded only when processes are asked for
                          and not (isinstance(n, ast.ImportFrom) and n.module == "_procbackend")]
                assert not nested, f"{path.name}: import inside {func.name}()"


def test_fork_hooks_reach_the_pool(monkeypatch):
    # Pool registers with the shared worker plumbing, whose after-fork hook resets it.
    from fastpool import _workers
    with fastpool.Pool(1) as pool:
        assert pool in set(_workers._owners)
        assert pool.submit(threading.get_ident).result(10)


def test_pool_is_accepted_where_an_executor_is():
    # Why Pool still subclasses ThreadPoolExecutor: asyncio's set_default_executor
    # insists on one (TypeError on 3.11+ otherwise).
    import asyncio
    import concurrent.futures as cf

    with fastpool.Pool(2, name="dflt") as pool:
        assert isinstance(pool, cf.ThreadPoolExecutor) and isinstance(pool, cf.Executor)

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_default_executor(pool)
            a = await loop.run_in_executor(None, lambda: threading.current_thread().name)
            b = await loop.run_in_executor(pool, abs, -3)
            return a, b

        name, three = asyncio.run(main())
        assert name.startswith("dflt_") and three == 3
