"""`fastpool run --resume` (issue 9, point 14): after any interruption, the same command
with --resume leaves OUT and the dead-letter file byte for byte as an uninterrupted run.

The kill-9 test interrupts runs at random points (several worker counts, failing records,
retries, bad lines, blank lines; some resumes are killed too) and compares the final files
with a reference run's. It prints how many kills landed mid-run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_support import _env, fastpool_cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

USER_MODULE = '''
import os, time

SLOW = float(os.environ.get("SLOW", "0"))
_calls = {}

def work(r):
    i = r["i"]
    n = _calls[i] = _calls.get(i, 0) + 1
    if SLOW:
        time.sleep(SLOW)
    if i % 11 == 0:
        raise ValueError(f"bad record {i}")        # fails for good: a dead letter
    if i % 7 == 0 and n == 1:
        raise ConnectionError("flaky")             # succeeds on its retry
    return {"i": i, "sq": i * i, "tag": r["tag"]}
'''

N = 3000


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "m.py").write_text(USER_MODULE)
    rng = random.Random(9)
    with open(tmp_path / "in.jsonl", "w") as f:
        for i in range(N):
            f.write(json.dumps({"i": i, "tag": "é" * rng.randrange(0, 40)}) + "\n")
            if i % 500 == 250:
                f.write("\n{not json\n")  # a blank line and a bad one: line numbers move
    return tmp_path


def _cmd(workers: int, *extra: str) -> list[str]:
    return [sys.executable, "-I", "-m", "fastpool", "run", "m:work", "in.jsonl",
            "-o", "out.jsonl", "--dead-letter", "dead.jsonl", "--workers", str(workers),
            "--retries", "1", "--backoff", "0", *extra]


def _files(d: Path) -> tuple[bytes, bytes | None]:
    dead = d / "dead.jsonl"
    return (d / "out.jsonl").read_bytes(), dead.read_bytes() if dead.exists() else None


@pytest.fixture
def reference(workdir: Path) -> tuple[bytes, bytes | None]:
    proc = subprocess.run(_cmd(4), cwd=workdir, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    files = _files(workdir)
    out = [json.loads(x) for x in files[0].splitlines()]
    assert len(out) == N - len(range(0, N, 11))
    for name in ("out.jsonl", "dead.jsonl", "out.jsonl.journal"):
        os.replace(workdir / name, workdir / ("ref-" + name))
    return files


def _resume(workdir: Path, workers: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(workers, "--resume"), cwd=workdir, env=_env(),
                          capture_output=True, text=True, timeout=120)


def _journal_done(workdir: Path) -> bool:
    path = workdir / "out.jsonl.journal"
    if not path.exists():
        return False
    lines = path.read_bytes().split(b"\n")
    try:
        return bool(json.loads(lines[-2]).get("done"))
    except (ValueError, IndexError):
        return False


def _kill_at_random(workdir: Path, workers: int, delay: float, env: dict[str, str]) -> bool:
    """Start the command (a resume if `resume`), SIGKILL it after `delay` s; True if it
    was killed before it completed."""
    proc = subprocess.Popen(_cmd(workers, *(["--resume"] if (workdir / "out.jsonl.journal")
                                            .exists() else [])),
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL and not _journal_done(workdir)


def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(
        workdir: Path, reference: tuple[bytes, bytes | None]) -> None:
    rng = random.Random(int(os.environ.get("RESUME_SEED", "1405")))
    trials = 20
    mid_run = 0
    started = time.monotonic()
    # Slow enough that a run lasts about a second, so most kills land mid-run.
    env = _env(SLOW="0.0006")
    for trial in range(trials):
        workers = (1, 2, 4, 8)[trial % 4]
        for name in ("out.jsonl", "dead.jsonl", "out.jsonl.journal"):
            (workdir / name).unlink(missing_ok=True)
        # The first run, and for every third trial a resume too, killed at random.
        for _ in range(1 + (trial % 3 == 0)):
            mid_run += _kill_at_random(workdir, workers, rng.uniform(0.3, 1.6), env)
        proc = _resume(workdir, (1, 2, 4, 8)[(trial + 1) % 4])
        assert proc.returncode == 1, proc.stderr
        assert _files(workdir) == reference, f"trial {trial}: files differ"
        assert _journal_done(workdir)
    took = time.monotonic() - started
    print(f"\nresume: {trials} trials, workers 1/2/4/8, {mid_run} kills landed mid-run, "
          f"all byte-equal, {took:.1f} s")
    assert mid_run >= trials // 2  # the test tested something


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_then_resume_equals_an_uninterrupted_run(
        workdir: Path, reference: tuple[bytes, bytes | None], signum: int) -> None:
    proc = subprocess.Popen(_cmd(4, "--grace", "0.2"), cwd=workdir, env=_env(SLOW="0.001"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Once records are being written (the signal handling is in place by then: a slow
    # start-up on a loaded machine is not mistaken for a run), mid-run.
    deadline = time.monotonic() + 60
    while not (workdir / "out.jsonl").exists() or not (workdir / "out.jsonl").stat().st_size:
        assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert (workdir / "out.jsonl.unprocessed").exists()
    proc2 = _resume(workdir, 2)
    assert proc2.returncode == 1, proc2.stderr
    assert _files(workdir) == reference
    assert not (workdir / "out.jsonl.unprocessed").exists()  # stale: removed by the resume


def test_torn_lines_are_repaired(workdir: Path, reference: tuple[bytes, bytes | None]) -> None:
    _kill_at_random(workdir, 2, 0.9, _env(SLOW="0.001"))
    # As after a power loss: half a record at the end of OUT and of the dead letters,
    # garbage at the end of the journal.
    with open(workdir / "out.jsonl", "ab") as f:
        f.write(b'{"i": 99999, "sq"')
    with open(workdir / "dead.jsonl", "ab") as f:
        f.write(b'{"line": 4')
    with open(workdir / "out.jsonl.journal", "ab") as f:
        f.write(b'{"offset": 12345, "li\x00\x00')
    proc = _resume(workdir, 4)
    assert proc.returncode == 1, proc.stderr
    assert _files(workdir) == reference


def test_resume_of_a_completed_run_changes_nothing(workdir: Path,
                                                   reference: tuple[bytes, bytes | None]) -> None:
    proc = subprocess.run(_cmd(2), cwd=workdir, env=_env(), capture_output=True, timeout=120)
    assert proc.returncode == 1
    proc2 = _resume(workdir, 2)
    assert proc2.returncode == 1, proc2.stderr  # the run's own code: records failed
    assert "already complete" in proc2.stderr
    assert _files(workdir) == reference


def test_resume_refuses_what_it_cannot_resume(workdir: Path) -> None:
    (workdir / "in2.jsonl").write_text('{"i": 1, "tag": ""}\n')
    proc = fastpool_cli("run", "m:work", "-", "-o", "o.jsonl", "--resume", cwd=workdir,
                        stdin='{"i": 1, "tag": ""}\n')
    assert proc.returncode == 2 and "input from a pipe cannot be resumed" in proc.stderr
    proc = fastpool_cli("run", "m:work", "in2.jsonl", "--resume", cwd=workdir)
    assert proc.returncode == 2 and "--resume needs OUT to be a regular file" in proc.stderr
    # Killed before its journal was written: a resume starts from the beginning.
    proc = fastpool_cli("run", "m:work", "in2.jsonl", "-o", "o.jsonl", "--resume", cwd=workdir)
    assert proc.returncode == 0 and "no journal" in proc.stderr, proc.stderr
    assert (workdir / "o.jsonl").read_text() == '{"i": 1, "sq": 1, "tag": ""}\n'
    with open(workdir / "in2.jsonl", "a") as f:
        f.write('{"i": 2, "tag": ""}\n')  # the input changed since
    proc = fastpool_cli("run", "m:work", "in2.jsonl", "-o", "o.jsonl", "--resume", cwd=workdir)
    assert proc.returncode == 2 and "input changed" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # OUT shorter than its checkpoint says (changed by hand): cutting it "back" would
    # pad it with zeros, so refuse.
    (workdir / "in2.jsonl").write_text('{"i": 1, "tag": ""}\n')
    assert fastpool_cli("run", "m:work", "in2.jsonl", "-o", "o.jsonl", cwd=workdir).returncode == 0
    journal = workdir / "o.jsonl.journal"
    header, last = journal.read_text().splitlines()[:2]
    entry = json.loads(last)
    del entry["done"]
    journal.write_text(header + "\n" + json.dumps(entry) + "\n")
    (workdir / "o.jsonl").write_text("{")
    proc = fastpool_cli("run", "m:work", "in2.jsonl", "-o", "o.jsonl", "--resume", cwd=workdir)
    assert proc.returncode == 2 and "shorter than at its last checkpoint" in proc.stderr, \
        proc.stderr
