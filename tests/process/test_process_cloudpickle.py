"""The cloudpickle extra of fastpool.ProcessPoolExecutor: lambdas, local functions and
classes, and functions of a __main__ that has no file (`python -c`, a REPL, a notebook)
run in spawn and forkserver workers when cloudpickle is installed, and fail with an
error naming the extra when it is not. Each case runs as its own `python -c` program:
that is the __main__ a notebook or REPL user has.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastpool

METHODS = [m for m in ("spawn", "forkserver", "fork") if m in mp.get_all_start_methods()]
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastpool.__file__)))
PROLOGUE = ("import os, sys; p = os.environ.get('FASTPOOL_TEST_PATH')\n"
            "if p and p not in sys.path: sys.path.insert(0, p)\n")
NO_CLOUDPICKLE = "import sys; sys.modules['cloudpickle'] = None  # as if not installed\n"

PROGRAM = """
import multiprocessing as mp
from functools import partial
from fastpool import ProcessPoolExecutor

def square(x):  # a function of this file-less __main__
    return x * x

class Point:  # and a class of it
    def __init__(self, x):
        self.x = x

def make_adder(n):
    def add(x):  # a local function (a closure)
        return x + n
    return add

OFFSET = 10
with ProcessPoolExecutor(2, mp_context=mp.get_context(METHOD),
                         initializer=lambda: None) as ex:
    print(ex.submit(lambda x: x + OFFSET, 1).result(timeout=60))
    print(list(ex.map(square, range(5))))
    print(ex.submit(make_adder(5), 1).result(timeout=60))
    print(ex.submit(partial(lambda a, b: a - b, 10), 3).result(timeout=60))
    print(ex.submit(lambda p: p.x, Point(7)).result(timeout=60))
    print(type(ex.submit(Point, 2).result(timeout=60)).__name__)
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FASTPOOL_TEST_PATH=PACKAGE_ROOT)
    return subprocess.run([sys.executable, "-I", "-c", PROLOGUE + code], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("method", METHODS)
def test_lambdas_locals_and_main_functions_run_with_cloudpickle(method):
    pytest.importorskip("cloudpickle")
    proc = _run(PROGRAM.replace("METHOD", repr(method)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:6] == ["11", "[0, 1, 4, 9, 16]", "6", "7", "7", "Point"]


@pytest.mark.parametrize("what, expect", [
    ("lambda x: x", "a lambda or local"),
    ("square", "defined in a __main__ with no file"),
    ("make_adder(1)", "a lambda or local"),
])
def test_without_cloudpickle_the_error_names_the_extra(what, expect):
    """The task fails its own future with a PicklingError saying what to install; the
    pool stays usable (no worker ever sees the task)."""
    code = NO_CLOUDPICKLE + textwrap.dedent(f"""
        import multiprocessing as mp, pickle
        from fastpool import ProcessPoolExecutor

        def square(x):
            return x * x

        def make_adder(n):
            def add(x):
                return x + n
            return add

        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
            exc = ex.submit({what}, 3).exception(timeout=60)
            assert isinstance(exc, pickle.PicklingError), repr(exc)
            print(exc)
            print(ex.submit(abs, -4).result(timeout=60))
        """)
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    message, after = proc.stdout.splitlines()[:2]
    assert "pip install 'fastpool[cloudpickle]'" in message and expect in message
    assert after == "4"


def test_script_main_functions_stay_references(tmp_path):
    """A __main__ with a file: its functions still go by name (as with the stdlib),
    so they see the module globals the initializer set in the worker, cloudpickle or
    not (by value, they would get a copy of the parent's globals)."""
    script = tmp_path / "job.py"
    script.write_text(PROLOGUE + textwrap.dedent("""
        import multiprocessing as mp
        from fastpool import ProcessPoolExecutor

        STATE = "parent"

        def init():
            global STATE
            STATE = "set by the initializer"

        def read():
            return STATE

        if __name__ == "__main__":
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                                     initializer=init) as ex:
                print(ex.submit(read).result(timeout=60))
        """))
    env = dict(os.environ, FASTPOOL_TEST_PATH=PACKAGE_ROOT)
    proc = subprocess.run([sys.executable, "-I", str(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "set by the initializer"


def test_cloudpickle_is_an_extra_and_in_the_test_extra():
    # So the by-value tests above run, not skip, wherever the test extra is installed.
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("no pyproject.toml next to the tests")
    text = pyproject.read_text()
    assert '\ncloudpickle = ["cloudpickle>=' in text
    assert '"cloudpickle>=' in text.split("\ntest = [", 1)[1].split("\n]", 1)[0]
