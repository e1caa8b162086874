"""`fastpool run --processes` (issue 12): FUNC in worker processes, with every guarantee
of the thread run -- the same files, dead letters and retries, crashes that lose nothing,
interruption and --resume.

Run as users run it (`python -I -m fastpool run ...` in a subprocess, on the core under
test). Worker processes start in a fraction of a second: the inputs stay small.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_support import _env, _read_jsonl, fastpool_cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and os._exit")

USER_MODULE = '''
import os, signal, threading, time

SLOW = float(os.environ.get("SLOW", "0"))


def first_call(i):
    # Across processes: a retry may run in another worker than the first attempt.
    try:
        os.close(os.open(f"{os.environ['FLAKY_DIR']}/{i}", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True

class Unpicklable(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()   # cannot cross processes as an object

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")

def work(r):
    i = r["i"]
    if SLOW:
        time.sleep(SLOW)
    if i % 11 == 0:
        raise ValueError(f"bad record {i}")          # fails for good
    if i % 13 == 0:
        raise Unpicklable(f"no pickle {i}")           # fails for good, text only
    if i % 17 == 0:
        raise Unprintable()
    if i % 7 == 0 and first_call(i):
        raise ConnectionError("flaky")                # succeeds on its retry
    return {"i": i, "sq": i * i, "tag": r["tag"]}

def pid(r):
    return os.getpid()

def stuck(r):
    if r == 2:
        with open("stuck-started", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)  # ignores the interruption
    return r

def crash(r):
    t = time.perf_counter()
    while time.perf_counter() - t < 0.0001:
        pass  # (batches of ~200 records: a crash is seen to cost its batch only)
    if r == int(os.environ["CRASH_AT"]):
        if os.environ.get("ONCE") and os.path.exists("crashed-once"):
            return r
        open("crashed-once", "w").close()
        if os.environ.get("HOW") == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    return r
'''

N = 1500


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "m.py").write_text(USER_MODULE)
    with open(tmp_path / "in.jsonl", "w") as f:
        for i in range(N):
            f.write(json.dumps({"i": i, "tag": "é" * (i % 9)}) + "\n")
            if i % 400 == 200:
                f.write("\n{not json\n")  # a blank line and a bad one
    return tmp_path


def _cmd(*extra: str) -> list[str]:
    return [sys.executable, "-I", "-m", "fastpool", "run", "m:work", "in.jsonl", "-o",
            "out.jsonl", "--dead-letter", "dead.jsonl", "--retries", "1", "--backoff", "0",
            *extra]


def _files(d: Path) -> tuple[bytes, bytes]:
    return (d / "out.jsonl").read_bytes(), (d / "dead.jsonl").read_bytes()


def _env_flaky(workdir: Path, **extra: str) -> dict[str, str]:
    """An environment whose flaky records fail once more (a fresh FLAKY_DIR)."""
    flaky = workdir / f"flaky{len(list(workdir.glob('flaky*')))}"
    flaky.mkdir()
    return _env(FLAKY_DIR=str(flaky), **extra)


def _run(workdir: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(*extra), cwd=workdir, env=_env_flaky(workdir, **env),
                          capture_output=True, text=True, timeout=120)


def test_processes_write_the_same_files_as_threads(workdir: Path) -> None:
    threads = _run(workdir, "--workers", "2")
    assert threads.returncode == 1, threads.stderr
    reference = _files(workdir)
    procs = _run(workdir, "--workers", "2", "--processes")
    assert procs.returncode == 1, procs.stderr
    # Results, dead letters (texts of exceptions that do not pickle or print, attempts
    # of retried records), blank and bad lines: byte for byte.
    assert _files(workdir) == reference
    assert procs.stderr.split(" in ")[0] == threads.stderr.split(" in ")[0]  # the counts
    dead = [json.loads(x) for x in reference[1].splitlines()]
    assert {"line": 14, "record": {"i": 13, "tag": "éééé"},
            "error": "Unpicklable: no pickle 13", "attempts": 2} in dead
    assert any(d["error"] == "Unprintable: <str() failed: RuntimeError>" for d in dead)


def test_func_runs_in_other_processes(workdir: Path) -> None:
    (workdir / "n.jsonl").write_text("".join(f"{i}\n" for i in range(50)))
    for extra, elsewhere in (([], False), (["--processes"], True)):
        proc = subprocess.Popen([sys.executable, "-I", "-m", "fastpool", "run",
                                 f"{workdir / 'm.py'}:pid", "n.jsonl", "--workers", "2",
                                 *extra], cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        pids = {int(x) for x in out.split()}
        if elsewhere:  # (FUNC given as a path: importable in the workers too)
            assert proc.pid not in pids and 1 <= len(pids) <= 2, pids
        else:
            assert pids == {proc.pid}


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_crashed_worker_costs_only_its_batch(workdir: Path, how: str) -> None:
    (workdir / "n.jsonl").write_text("".join(f"{i}\n" for i in range(3000)))
    proc = fastpool_cli("run", "m:crash", "n.jsonl", "-o", "out.jsonl", "--processes",
                        "--workers", "2", cwd=workdir, env=_env(CRASH_AT="2000", HOW=how))
    assert proc.returncode == 1, proc.stderr
    out = _read_jsonl(workdir / "out.jsonl")
    dead = _read_jsonl(workdir / "out.jsonl.dead-letter.jsonl")
    # Nothing lost, nothing twice, in order; the records of the dead process's batch
    # are dead letters that say why, and the run went on after it.
    assert sorted(out + [d["record"] for d in dead]) == list(range(3000))  # type: ignore
    assert out == sorted(out) and out[-1] == 2999  # type: ignore
    assert 2000 in [d["record"] for d in dead]  # type: ignore
    reason = "exit code 3" if how == "exit" else "killed by SIGKILL"
    for d in dead:
        assert d["error"].startswith("WorkerCrashed: the worker process (pid ")  # type: ignore
        assert f"died: {reason}" in d["error"] and d["attempts"] == 1  # type: ignore
    assert len(dead) < 600, len(dead)  # a batch, not the run


def test_a_crash_is_retried(workdir: Path) -> None:
    (workdir / "n.jsonl").write_text("".join(f"{i}\n" for i in range(3000)))
    # Crashes once: its retry (and those of its batch-mates) succeed.
    proc = fastpool_cli("run", "m:crash", "n.jsonl", "-o", "out.jsonl", "--processes",
                        "--workers", "2", "--retries", "1", "--backoff", "0", cwd=workdir,
                        env=_env(CRASH_AT="2000", ONCE="1"))
    assert proc.returncode == 0, proc.stderr
    assert _read_jsonl(workdir / "out.jsonl") == list(range(3000))
    # Crashes every time: dead-lettered after its last attempt, alone.
    (workdir / "crashed-once").unlink()
    proc = fastpool_cli("run", "m:crash", "n.jsonl", "-o", "out.jsonl", "--processes",
                        "--workers", "2", "--retries", "2", "--backoff", "0", cwd=workdir,
                        env=_env(CRASH_AT="2000"))
    assert proc.returncode == 1, proc.stderr
    assert _read_jsonl(workdir / "out.jsonl") == [i for i in range(3000) if i != 2000]
    [dead] = _read_jsonl(workdir / "out.jsonl.dead-letter.jsonl")
    assert dead["record"] == 2000 and dead["attempts"] == 3  # type: ignore
    assert "running line 2001 died: exit code 3" in dead["error"]  # type: ignore


def _pids_alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":  # a zombie has exited (its parent may not reap it soon)
            alive.add(pid)
    return alive


def _worker_pids(parent: int) -> set[int]:
    """The run's descendants (its forkserver and the workers it forked)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_interrupted_then_resumed_equals_an_uninterrupted_run(workdir: Path,
                                                              signum: int) -> None:
    # SIGINT goes to the whole process group, as Ctrl-C in a terminal sends it: the
    # workers ignore it, the run stops as it would with threads.
    reference_run = _run(workdir, "--workers", "2", "--processes")
    assert reference_run.returncode == 1, reference_run.stderr
    reference = _files(workdir)
    for name in ("out.jsonl", "dead.jsonl", "out.jsonl.journal"):
        (workdir / name).unlink()
    proc = subprocess.Popen(_cmd("--workers", "2", "--processes", "--grace", "2"),
                            cwd=workdir, env=_env_flaky(workdir, SLOW="0.002"),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (workdir / "out.jsonl").exists() or not (workdir / "out.jsonl").stat().st_size:
            assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
            time.sleep(0.01)
        time.sleep(0.3)
        workers = _worker_pids(proc.pid)
        assert workers
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if signum != signal.SIGKILL:
        assert proc.returncode == 128 + signum, stderr
        assert "WorkerCrashed" not in (workdir / "dead.jsonl").read_text()
        # Whole input lines, each one not in OUT nor in the dead letters.
        un = (workdir / "out.jsonl.unprocessed").read_bytes()
        assert un.endswith(b"\n") and un.count(b"\n") > 10
        lines = (workdir / "in.jsonl").read_bytes().splitlines()
        ended = {json.loads(x)["i"] for x in (workdir / "out.jsonl").read_bytes().splitlines()}
        ended |= {json.loads(x)["record"]["i"] for x in
                  (workdir / "dead.jsonl").read_bytes().splitlines()
                  if isinstance(json.loads(x)["record"], dict)}
        for line in un.splitlines():
            assert line in lines
            if line.startswith(b'{"i"'):  # (not a blank or bad one)
                assert json.loads(line)["i"] not in ended, line
    else:
        assert proc.returncode == -signal.SIGKILL
    # The worker processes died with the run, even SIGKILLed.
    deadline = time.monotonic() + 10
    while _pids_alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pids_alive(workers)
    resumed = _run(workdir, "--workers", "2", "--processes", "--resume")
    assert resumed.returncode == 1, resumed.stderr
    assert _files(workdir) == reference


def test_func_that_a_worker_cannot_load_stops_the_run_before_any_record(
        workdir: Path) -> None:
    (workdir / "parent_only.py").write_text(
        "import multiprocessing\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    raise ImportError('not in a worker')\n"
        "def f(r):\n"
        "    return r\n")
    proc = fastpool_cli("run", "parent_only:f", "in.jsonl", "-o", "out.jsonl", "--processes",
                        "--workers", "2", cwd=workdir)
    # Not a crash or a failure per record: one error, and the input left whole.
    assert proc.returncode == 3, proc.stderr
    assert ("cannot run parent_only:f in a worker process: RuntimeError: a worker process "
            "cannot load parent_only:f: error importing 'parent_only': ImportError: not in "
            "a worker") in proc.stderr
    assert (workdir / "out.jsonl.unprocessed").read_bytes() == (workdir / "in.jsonl").read_bytes()
    assert (workdir / "out.jsonl").read_bytes() == b""


def test_processes_are_documented_in_help(workdir: Path) -> None:
    proc = fastpool_cli("run", "--help", cwd=workdir)
    assert proc.returncode == 0
    assert "--processes" in proc.stdout and "WorkerCrashed" in proc.stdout


def test_workers_import_func_from_the_directory_of_each_run(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    # In one process, runs from two directories: the forkserver (started by the first,
    # or earlier) has neither's directory nor sys.path, yet each run's workers import
    # their FUNC and open relative paths as the run would.
    from fastpool import cli

    monkeypatch.setattr(sys, "path", list(sys.path))  # load_function adds the cwd
    for name in ("one", "two"):
        d = tmp_path / name
        d.mkdir()
        (d / f"mod_{name}.py").write_text(
            "import os\n"
            "def f(r):\n"
            "    with open('data.txt') as f:\n"
            "        return [os.getcwd(), f.read(), os.getpid()]\n")
        (d / "data.txt").write_text(name)
        (d / "in.jsonl").write_text("1\n2\n")
        monkeypatch.chdir(d)
        assert cli.main(["run", f"mod_{name}:f", "in.jsonl", "-o", "out.jsonl", "--processes",
                         "--workers", "1", "--no-progress"]) == 0
        out = _read_jsonl(d / "out.jsonl")
        assert [r[:2] for r in out] == [[str(d), name]] * 2  # type: ignore
        assert out[0][2] != os.getpid()  # type: ignore


def test_a_record_stuck_past_the_grace_period_is_saved_and_its_worker_killed(
        workdir: Path) -> None:
    (workdir / "n.jsonl").write_text("".join(f"{i}\n" for i in range(5)))
    proc = subprocess.Popen([sys.executable, "-I", "-m", "fastpool", "run", "m:stuck",
                             "n.jsonl", "-o", "out.jsonl", "--processes", "--workers", "2",
                             "--grace", "0.5"], cwd=workdir, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (workdir / "stuck-started").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)
        worker = int((workdir / "stuck-started").read_text())
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    assert took < 20, took  # the stuck worker (60 s) did not hold the exit
    out = (workdir / "out.jsonl").read_text().split()
    un = (workdir / "out.jsonl.unprocessed").read_text().split()
    assert "2" in un and sorted(out + un, key=int) == [str(i) for i in range(5)]
    deadline = time.monotonic() + 10
    while _pids_alive({worker}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pids_alive({worker})
