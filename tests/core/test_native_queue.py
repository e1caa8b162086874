"""Runs the C++ tests of src/fp_queue.h (tests/core/native/test_ring.cpp) from pytest.

The queue is tested alone, without Python, plain and under ThreadSanitizer and
AddressSanitizer+UBSan (tests/core/native/run.sh builds and runs each variant). This is the one
test module allowed to skip, and only when there is no C++ compiler (or no POSIX shell)
on the machine; with the CI environment variable set it never skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tests" / "core" / "native" / "run.sh"
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
IN_CI = bool(os.environ.get("CI"))


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI is set: this test must run there)")
    pytest.skip(what)


def _sanitizer_works(flag: str, tmp: Path) -> bool:
    """The compiler accepts -fsanitize=flag and its runtime is installed."""
    src = tmp / "probe.cpp"
    src.write_text("#include <thread>\nint main() { std::thread([]{}).join(); return 0; }\n")
    exe = tmp / "probe"
    build = subprocess.run([CXX, "-std=c++17", "-pthread", f"-fsanitize={flag}", str(src),
                            "-o", str(exe)], capture_output=True)
    if build.returncode != 0:
        return False
    return subprocess.run([str(exe)], capture_output=True).returncode == 0


@pytest.mark.parametrize("variant", ["plain", "tsan", "asan"])
def test_fp_queue_cpp(variant: str, tmp_path: Path) -> None:
    if sys.platform == "win32":
        _missing("the C++ queue test needs POSIX (fork, a bash shell)")
    if CXX is None or shutil.which("bash") is None:
        _missing("no C++ compiler (g++/clang++) or bash found")
    flag = {"tsan": "thread", "asan": "address,undefined"}.get(variant)
    if flag and not _sanitizer_works(flag, tmp_path):
        _missing(f"{CXX} cannot build and run with -fsanitize={flag}")
    env = dict(os.environ, CXX=CXX, FP_NATIVE_BUILD_DIR=str(tmp_path / "build"))
    # Small scale: every path still runs, in seconds even on a loaded 2-core machine.
    env.setdefault("FP_TEST_SCALE", "0.3" if variant == "plain" else "0.15")
    proc = subprocess.run(["bash", str(RUN), variant], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=110)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert re.search(r"all \d+ passed", output) and "CHECK failed" not in output, output[-3000:]
    for report in ("WARNING: ThreadSanitizer", "ERROR: AddressSanitizer", "runtime error:"):
        assert report not in output, output[-6000:]
