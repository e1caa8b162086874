"""Shared fixtures: which core is under test, and the two executors compared.

The suite runs twice in CI: against the compiled core, then with FASTPOOL_NO_EXTENSIONS=1
against the pure-Python fallback. Direct core tests use `core_impl` (both cores in one run);
drop-in tests use `executor_cls` (fastpool's ThreadPoolExecutor and the stdlib's, so every
drop-in behaviour is checked against the reference it copies).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

# Shared test helpers (tests/pool_support.py) import as plain modules; with
# --import-mode=importlib the tests directory is not otherwise on sys.path.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import fastpool
from fastpool import _pick_core

REQUIRE_NATIVE = os.environ.get("FASTPOOL_REQUIRE_NATIVE", "") not in ("", "0")
# The directory holding the fastpool package under test (site-packages, or a source
# tree put on sys.path): subprocesses are pointed at the very same package.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastpool.__file__)))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "stdlib_bug(issue): the stdlib ThreadPoolExecutor has this bug and fastpool fixes it; "
        "the stdlib run of the test is xfail(strict=True)",
    )
    config.addinivalue_line(
        "markers",
        "version_independent: slow, and exercises nothing that differs between Python "
        "versions; .ci/run runs it on the default Python only (see VERSION_INDEPENDENT)",
    )


# Slow tests whose subject does not depend on the Python version: the C++ queue tests
# (compiled without Python), the kill -9 resume trials and the limits property test
# (pure Pool logic, already run on both cores), the benchmark smoke run, the release
# pipeline's linters and the README examples. .ci/run runs every test on the default
# Python and deselects these (-m "not version_independent") on the other Pythons, to
# keep CI well under 30 minutes. Node-id prefixes, so a renamed test is still found.
VERSION_INDEPENDENT = (
    "tests/core/test_native_queue.py::test_fp_queue_cpp",
    "tests/cli/test_run_resume.py::test_kill_9_at_random_points",
    "tests/pool/test_pool_limits_property.py::",
    "tests/cli/test_cli.py::test_bench_quick_json",
    "tests/package/test_release.py::",
    "tests/package/test_docs.py::",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(VERSION_INDEPENDENT):
            item.add_marker(pytest.mark.version_independent)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"fastpool {fastpool.__version__} from {os.path.dirname(fastpool.__file__)}",
        f"fastpool core: {'native' if fastpool.NATIVE else 'pure-Python'} "
        f"({_pick_core.core.__file__})",
        "FASTPOOL_NO_EXTENSIONS={!r} FASTPOOL_REQUIRE_NATIVE={!r}".format(
            os.environ.get("FASTPOOL_NO_EXTENSIONS", ""),
            os.environ.get("FASTPOOL_REQUIRE_NATIVE", ""),
        ),
    ]


def pytest_sessionstart(session: pytest.Session) -> None:
    # A source checkout on sys.path (no compiled core in it) shadowing the installed wheel
    # would silently test the fallback twice; with FASTPOOL_REQUIRE_NATIVE=1 that is fatal.
    if REQUIRE_NATIVE and not fastpool.NATIVE:
        pytest.exit(
            "FASTPOOL_REQUIRE_NATIVE=1 but fastpool.NATIVE is False: the compiled core "
            f"fastpool._core was not loaded (fastpool imported from {fastpool.__file__}, "
            f"core {_pick_core.core.__file__}, "
            f"FASTPOOL_NO_EXTENSIONS={os.environ.get('FASTPOOL_NO_EXTENSIONS', '')!r})",
            returncode=1,
        )


def _import_native_core():
    try:
        return importlib.import_module("fastpool._core")
    except ImportError:
        if REQUIRE_NATIVE:
            raise
        return None


@pytest.fixture(params=["native", "python"])
def core_impl(request: pytest.FixtureRequest):
    """The core module under test: fastpool._core (compiled) or fastpool._py."""
    if request.param == "python":
        return importlib.import_module("fastpool._py")
    mod = _import_native_core()
    if mod is None:
        pytest.skip("fastpool._core is not built (pure-Python install)")
    return mod


STDLIB_TPE = concurrent.futures.ThreadPoolExecutor


@pytest.fixture(
    params=[
        pytest.param(fastpool.ThreadPoolExecutor, id="fastpool"),
        pytest.param(STDLIB_TPE, id="stdlib"),
    ]
)
def executor_cls(request: pytest.FixtureRequest):
    """fastpool.ThreadPoolExecutor, or the stdlib one it must behave like.

    Tests marked `stdlib_bug(...)` check a stdlib bug fastpool fixes: for the stdlib
    they are expected to fail (strictly, so a fixed stdlib is noticed).
    """
    cls = request.param
    marker = request.node.get_closest_marker("stdlib_bug")
    if cls is STDLIB_TPE and marker is not None:
        request.applymarker(
            pytest.mark.xfail(strict=True, reason=f"stdlib bug {marker.args[0]}")
        )
    return cls


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    """Fail a test that leaves pool worker threads running behind it."""
    before = set(threading.enumerate())
    yield
    # Workers of a pool shut down with wait=False may take a moment to exit.
    end = time.monotonic() + 10.0
    while True:
        # Pool workers are daemon threads that interpreter exit still joins (those in
        # executor._threads_queues): they count as well.
        joined_at_exit = set(fastpool.executor._threads_queues)
        leaked = [
            t for t in threading.enumerate()
            if t not in before and t.is_alive() and (not t.daemon or t in joined_at_exit)
        ]
        if not leaked or time.monotonic() > end:
            break
        time.sleep(0.01)
    assert not leaked, f"threads left running after the test: {leaked}"


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (f"exit code {self.returncode}\n--- stdout ---\n{self.stdout}"
                f"--- stderr ---\n{self.stderr}")


def run_python(args: list[str], *, timeout: float = 60.0, env: dict[str, str] | None = None,
               cwd: str | None = None, flags: tuple[str, ...] = ()) -> Completed:
    """Run `sys.executable -I -X faulthandler FLAGS ARGS`; a hang fails the test.

    -I keeps the current directory, the script's directory and PYTHON* variables off
    sys.path, so a source checkout cannot shadow the package under test; programs find
    that package through FASTPOOL_TEST_PATH (see PROLOGUE). The FASTPOOL_* switches
    are inherited, so the child runs on the same core as the tests.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["FASTPOOL_TEST_PATH"] = PACKAGE_ROOT
    cmd = [sys.executable, "-I", "-X", "faulthandler", *flags, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=full_env, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"{cmd} hung for {timeout}s\n--- stdout ---\n{out}--- stderr ---\n{err}")
    return Completed(proc.returncode, proc.stdout, proc.stderr)


# Put first in every `-c` program and isolated script: import the package under test.
PROLOGUE = (
    "import os, sys; p = os.environ.get('FASTPOOL_TEST_PATH')\n"
    "if p and p not in sys.path: sys.path.insert(0, p)\n"
)


@pytest.fixture
def run_py(tmp_path):
    """run_py(code, ...) runs a program (PROLOGUE prepended) in a fresh interpreter."""

    def run(code: str, *, timeout: float = 60.0, env: dict[str, str] | None = None,
            args: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> Completed:
        return run_python(["-c", PROLOGUE + code, *args], timeout=timeout, env=env,
                          cwd=str(tmp_path), flags=flags)

    return run


@pytest.fixture
def run_script(tmp_path):
    """run_script(path, ...) runs a file in a fresh interpreter, from an empty directory."""

    def run(path: str, *, timeout: float = 60.0, env: dict[str, str] | None = None,
            args: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> Completed:
        return run_python([str(path), *args], timeout=timeout, env=env, cwd=str(tmp_path),
                          flags=flags)

    return run
