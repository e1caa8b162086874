"""`fastpool run` at its edges (issue 9, points 11-20): paths, records nothing may lose,
pipes, retries, long lines, signatures, progress and exit codes.

Run as users run it, `python -I -m fastpool run ...` in a subprocess, on the core under
test (FASTPOOL_* switches are inherited). Small inputs: the file takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_support import _env, _read_jsonl, _write_jsonl, fastpool_cli

USER_MODULE = '''
import os, time

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")
    def __repr__(self):
        raise RuntimeError("no repr either")

def unprintable(r):
    if r % 3 == 0:
        raise Unprintable()
    return r

def fail_bytes(line):
    if "\\udcff" in line:
        raise ValueError("undecodable " + line)
    return line

def two_args(a, b):
    return a

def ident(r):
    return r

def size(r):
    return len(r)

_calls = {}
LOG = os.environ.get("CALL_LOG")

def flaky0(r):
    # record 0 fails its first attempt; every call is logged in order
    n = _calls[r] = _calls.get(r, 0) + 1
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{r}:{n}\\n")
    if r == 0 and n == 1:
        raise ConnectionError("later")
    return r

def typed(r):
    n = _calls[r["i"]] = _calls.get(r["i"], 0) + 1
    if n == 1:
        raise {"conn": ConnectionRefusedError, "value": ValueError}[r["kind"]]("boom")
    return r["i"]

def slowish(r):
    time.sleep(0.002)
    return r

def stuck(r):
    if r == 2:
        open("stuck-started", "w").close()
        time.sleep(60)  # ignores the interruption
    return r
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "m.py").write_text(USER_MODULE)
    return tmp_path


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- 11. OUT naming INPUT ------------------------------------------------------------


@pytest.mark.parametrize("how", ["same", "hardlink", "symlink", "relative"])
def test_out_naming_the_input_is_refused(workdir: Path, how: str) -> None:
    data = "".join(f"{i}\n" for i in range(1000))
    (workdir / "in.jsonl").write_text(data)
    out = {"same": "in.jsonl", "relative": "./sub/../in.jsonl",
           "hardlink": "hard.jsonl", "symlink": "sym.jsonl"}[how]
    (workdir / "sub").mkdir()
    if how == "hardlink":
        os.link(workdir / "in.jsonl", workdir / "hard.jsonl")
    elif how == "symlink":
        os.symlink(workdir / "in.jsonl", workdir / "sym.jsonl")
    proc = fastpool_cli("run", "m:ident", "in.jsonl", "-o", out, cwd=workdir)
    assert "is the same file as INPUT" in _one_line_error(proc)
    assert (workdir / "in.jsonl").read_text() == data


def test_dead_letter_naming_the_input_is_refused(workdir: Path) -> None:
    (workdir / "in.jsonl").write_text("1\n")
    proc = fastpool_cli("run", "m:ident", "in.jsonl", "-o", "out.jsonl",
                        "--dead-letter", "in.jsonl", cwd=workdir)
    assert "--dead-letter 'in.jsonl' is the same file as INPUT" in _one_line_error(proc)
    assert (workdir / "in.jsonl").read_text() == "1\n"


# -- 12. every output path checked before the first record ---------------------------


@pytest.mark.parametrize("option", ["-o", "--dead-letter", "--unprocessed"])
def test_output_in_a_missing_directory_is_refused_before_any_record(workdir: Path,
                                                                    option: str) -> None:
    (workdir / "in.jsonl").write_text("1\n2\n")
    args = {"-o": "out.jsonl", "--dead-letter": "dead.jsonl", "--unprocessed": "un"}
    args[option] = "missing/x.jsonl"
    proc = fastpool_cli("run", "m:unprintable", "in.jsonl",
                        *[a for kv in args.items() for a in kv], cwd=workdir)
    line = _one_line_error(proc)
    assert "no such directory" in line and "missing" in line
    assert not (workdir / "out.jsonl").exists()  # nothing was run nor written


def test_a_fresh_run_leaves_no_stale_dead_letters(workdir: Path) -> None:
    (workdir / "in.jsonl").write_text("1\n2\n")
    (workdir / "out.jsonl.dead-letter.jsonl").write_text('{"line": 1, "old": true}\n')
    (workdir / "out.jsonl.unprocessed").write_text("old\n")
    proc = fastpool_cli("run", "m:ident", "in.jsonl", "-o", "out.jsonl", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert not (workdir / "out.jsonl.dead-letter.jsonl").exists()
    assert not (workdir / "out.jsonl.unprocessed").exists()


def test_paths_must_differ(workdir: Path) -> None:
    (workdir / "in.jsonl").write_text("1\n")
    proc = fastpool_cli("run", "m:ident", "in.jsonl", "-o", "out.jsonl", "--dead-letter",
                        "x.jsonl", "--unprocessed", "x.jsonl", cwd=workdir)
    assert "must be different files" in _one_line_error(proc)


# -- 13. nothing inside the runner may lose records -----------------------------------


def test_exception_whose_str_and_repr_raise_is_dead_lettered(workdir: Path) -> None:
    _write_jsonl(workdir / "in.jsonl", list(range(21)))
    proc = fastpool_cli("run", "m:unprintable", "in.jsonl", "-o", "out.jsonl",
                        "--workers", "3", "--dead-letter", "dead.jsonl", cwd=workdir)
    assert proc.returncode == 1, proc.stderr  # failures, not an internal error
    assert _read_jsonl(workdir / "out.jsonl") == [i for i in range(21) if i % 3]
    dead = _read_jsonl(workdir / "dead.jsonl")
    assert [d["record"] for d in dead] == [i for i in range(21) if i % 3 == 0]
    assert all(d["error"].startswith("Unprintable: <str() failed") for d in dead), dead


def test_failing_non_utf8_line_in_lines_format_is_dead_lettered(workdir: Path) -> None:
    (workdir / "in.txt").write_bytes(b"ok\nbad \xff byte\nfine\n")
    proc = fastpool_cli("run", "m:fail_bytes", "in.txt", "--format", "lines",
                        "-o", "out.txt", "--dead-letter", "dead.jsonl", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    assert (workdir / "out.txt").read_bytes() == b"ok\nfine\n"
    [dead] = _read_jsonl(workdir / "dead.jsonl")  # valid UTF-8 JSON
    assert dead["line"] == 2 and dead["record"] == "bad \udcff byte"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_that_cannot_be_written_is_an_internal_error_and_loses_nothing(
        workdir: Path) -> None:
    lines = [json.dumps(i) for i in range(500)]
    (workdir / "in.jsonl").write_text("\n".join(lines) + "\n")
    proc = fastpool_cli("run", "m:ident", "in.jsonl", "-o", "/dev/full",
                        "--dead-letter", "dead.jsonl", "--unprocessed", "un.jsonl",
                        cwd=workdir)
    assert proc.returncode == 3, proc.stderr
    assert "internal error" in proc.stderr and "Traceback" not in proc.stderr
    assert "No space left" in proc.stderr or "ENOSPC" in proc.stderr or "28" in proc.stderr
    # Not one record written, so every one is in UNPROCESSED, whole, in order.
    assert (workdir / "un.jsonl").read_text().splitlines() == lines


# -- 15. input from a pipe, interrupted ---------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_pipe_interrupted_saves_whole_lines_and_exact_counts(workdir: Path) -> None:
    lines = [json.dumps({"i": i, "pad": "x" * (i % 37)}) for i in range(3000)]
    data = ("\n".join(lines) + "\n").encode()
    cmd = [sys.executable, "-I", "-m", "fastpool", "run", "m:slowish", "-", "-o", "out.jsonl",
           "--workers", "4", "--grace", "5"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        # Chunks that cut lines in the middle, slowly, so the interruption finds a
        # partial line in the reader's buffer.
        sent = 0
        start = time.monotonic()
        while time.monotonic() - start < 1.5 and sent < len(data):
            proc.stdin.write(data[sent:sent + 700])
            proc.stdin.flush()
            sent += 700
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        try:
            proc.stdin.write(data[sent:sent + 700])  # the rest of the cut line, and more
            proc.stdin.flush()
            sent += 700
        except BrokenPipeError:
            pass
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    out = (workdir / "out.jsonl").read_text().splitlines()
    un = (workdir / "out.jsonl.unprocessed").read_text().splitlines() if (
        workdir / "out.jsonl.unprocessed").exists() else []
    read = int(re.search(r"(\d+) lines were read from the input", stderr).group(1))
    # Exact: the lines read are the results then the unprocessed lines, all whole.
    assert 0 < len(out) and len(out) + len(un) == read, stderr
    assert out + un == lines[:read]
    assert f"{len(out)} succeeded" in stderr and f"{len(un)} unprocessed" in stderr
    # (No unprocessed file when every line read was processed before the signal.)
    assert not un or (workdir / "out.jsonl.unprocessed").read_bytes().endswith(b"\n")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_record_stuck_past_the_grace_period_is_saved_and_the_process_exits(
        workdir: Path) -> None:
    (workdir / "in.jsonl").write_text("".join(f"{i}\n" for i in range(5)))
    cmd = [sys.executable, "-I", "-m", "fastpool", "run", "m:stuck", "in.jsonl", "-o",
           "out.jsonl", "--workers", "2", "--grace", "0.5"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (workdir / "stuck-started").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)
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


# -- 16. retries do not stall ordered output -----------------------------------------


def test_a_record_waiting_for_its_retry_does_not_hold_back_the_others(workdir: Path) -> None:
    _write_jsonl(workdir / "in.jsonl", list(range(200)))
    log = workdir / "calls.log"
    proc = fastpool_cli("run", "m:flaky0", "in.jsonl", "-o", "out.jsonl", "--workers", "2",
                        "--in-flight", "2", "--retries", "1", "--backoff", "0.5",
                        cwd=workdir, env=_env(CALL_LOG=str(log)))
    assert proc.returncode == 0, proc.stderr
    assert _read_jsonl(workdir / "out.jsonl") == list(range(200))  # still in order
    calls = log.read_text().split()
    # While record 0 waited 0.5 s for its retry, every other record ran (the old
    # window of --in-flight records would have held them back).
    assert calls.index("0:2") > max(calls.index(f"{i}:1") for i in range(1, 200))


def test_retry_on_retries_only_the_named_exceptions(workdir: Path) -> None:
    records = [{"i": i, "kind": "conn" if i % 2 else "value"} for i in range(10)]
    _write_jsonl(workdir / "in.jsonl", records)
    # ConnectionRefusedError matches ConnectionError along its MRO.
    proc = fastpool_cli("run", "m:typed", "in.jsonl", "-o", "out.jsonl", "--retries", "2",
                        "--backoff", "0", "--retry-on", "ConnectionError,nosuch.Error",
                        "--dead-letter", "dead.jsonl", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    assert _read_jsonl(workdir / "out.jsonl") == [1, 3, 5, 7, 9]
    dead = _read_jsonl(workdir / "dead.jsonl")
    assert [d["record"]["i"] for d in dead] == [0, 2, 4, 6, 8]
    assert all(d["attempts"] == 1 and d["error"] == "ValueError: boom" for d in dead)
    # A dotted path names the class too.
    proc = fastpool_cli("run", "m:typed", "in.jsonl", "-o", "out2.jsonl", "--retries", "1",
                        "--backoff", "0", "--retry-on", "builtins.ValueError", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    assert _read_jsonl(workdir / "out2.jsonl") == [0, 2, 4, 6, 8]


def test_retry_on_needs_names(workdir: Path) -> None:
    (workdir / "in.jsonl").write_text("1\n")
    proc = fastpool_cli("run", "m:ident", "in.jsonl", "--retry-on", "A,,B", cwd=workdir)
    assert "argument --retry-on: expected NAME[,NAME...]" in _one_line_error(proc)


# -- 17. long lines --------------------------------------------------------------------


def test_long_lines_are_read_whole_or_dead_lettered_past_max_line_bytes(workdir: Path) -> None:
    big = "y" * (24 << 20)
    (workdir / "in.jsonl").write_text(f'"a"\n"{big}"\n"b"\n')
    proc = fastpool_cli("run", "m:size", "in.jsonl", "-o", "out.jsonl", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert _read_jsonl(workdir / "out.jsonl") == [1, len(big), 1]
    proc = fastpool_cli("run", "m:size", "in.jsonl", "-o", "out2.jsonl", "--max-line-bytes",
                        "1000000", "--dead-letter", "dead.jsonl", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    assert _read_jsonl(workdir / "out2.jsonl") == [1, 1]
    [dead] = _read_jsonl(workdir / "dead.jsonl")
    assert dead["line"] == 2 and dead["attempts"] == 0
    assert dead["error"] == f"line of {len(big) + 3} bytes exceeds --max-line-bytes 1000000"
    assert dead["record"].startswith('"yyy') and len(dead["record"]) <= 200


# -- 18. the function's signature ---------------------------------------------------


def test_function_that_cannot_take_one_argument_is_refused_at_start(workdir: Path) -> None:
    (workdir / "in.jsonl").write_text("1\n2\n")
    proc = fastpool_cli("run", "m:two_args", "in.jsonl", "-o", "out.jsonl", cwd=workdir)
    line = _one_line_error(proc)
    assert "m:two_args must accept one positional argument" in line and "(a, b)" in line
    assert not (workdir / "out.jsonl").exists()
    assert not (workdir / "out.jsonl.dead-letter.jsonl").exists()


# -- 19. progress ------------------------------------------------------------------------


def _run_on_a_pty(workdir: Path, code: str, columns: int) -> bytes:
    """Run `code` with stderr on a pseudo-terminal of `columns` columns; its output."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 20, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-I", "-c", code], cwd=workdir,
                            env=_env(COLUMNS=str(columns), LINES="20"),
                            stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks)
    return b"".join(chunks)


@pytest.mark.skipif(sys.platform == "win32", reason="pty")
def test_progress_line_fits_the_terminal_and_is_cleared(workdir: Path) -> None:
    _write_jsonl(workdir / "in.jsonl", list(range(300)))
    code = ("import sys; sys.modules['tqdm'] = None\n"  # as if tqdm were not installed
            "from fastpool.cli import main\n"
            "sys.exit(main(['run', 'm:slowish', 'in.jsonl', '-o', 'out.jsonl',"
            " '--workers', '1']))")
    text = _run_on_a_pty(workdir, "import sys; sys.path.insert(0, '.')\n" + code, 50)
    body, _, summary = text.replace(b"\r\n", b"\n").rpartition(b"\r")
    updates = [u for u in body.split(b"\r") if u.strip()]
    assert updates, text  # shown without --progress: stderr is a terminal
    assert all(len(u) <= 49 for u in updates), updates  # never wraps
    assert any(b"%" in u for u in updates), updates  # a regular file: percentage
    # Cleared at the end: the last \r-segment before the summary is blanks only.
    assert body.split(b"\r")[-1].strip() == b"", text[-200:]
    assert summary.startswith(b"fastpool run: 300 succeeded"), summary


@pytest.mark.skipif(sys.platform == "win32", reason="pty")
def test_progress_uses_tqdm_when_installed(workdir: Path) -> None:
    pytest.importorskip("tqdm")
    _write_jsonl(workdir / "in.jsonl", list(range(300)))
    code = ("import sys; sys.path.insert(0, '.')\nfrom fastpool.cli import main\n"
            "sys.exit(main(['run', 'm:slowish', 'in.jsonl', '-o', 'out.jsonl',"
            " '--workers', '1']))")
    text = _run_on_a_pty(workdir, code, 80)
    assert b"fastpool run:" in text and b"B/s" in text, text[-300:]  # tqdm's byte rate


def test_no_progress_when_stderr_is_not_a_terminal(workdir: Path) -> None:
    _write_jsonl(workdir / "in.jsonl", list(range(50)))
    proc = fastpool_cli("run", "m:ident", "in.jsonl", "-o", "out.jsonl", cwd=workdir)
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == [proc.stderr.splitlines()[-1]]  # the summary only
    assert "\r" not in proc.stderr


# -- 20. exit codes ------------------------------------------------------------------


def test_exit_codes_are_documented_in_help(workdir: Path) -> None:
    proc = fastpool_cli("run", "--help", cwd=workdir)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for needle in ("0 all records succeeded", "1 some failed", "2 bad arguments",
                   "3 internal error", "130 SIGINT", "143 SIGTERM", "--resume",
                   "--retry-on", "--max-line-bytes", "--metrics-host"):
        assert needle in text, needle


def test_main_returns_the_code_of_a_usage_error(workdir: Path, capsys) -> None:
    from fastpool import cli

    assert cli.main(["run", "x:y", str(workdir / "none.jsonl"), "--workers", "0"]) == 2
    assert cli.main(["--version"]) == 0
    capsys.readouterr()


# -- the per-record path: results and errors as json.dumps gives them ------------------

SHAPES_MODULE = '''
def shape(r):
    if r == "cycle":
        x = []
        x.append(x)
        return x
    if r == "set":
        return {1}
    if r == "surrogate":
        return "\\ud800"
    if r == "floats":
        return [float("nan"), float("inf"), -0.0, 1e300, 0.1]
    if r == "keys":
        return {1: (True, None), 2.5: "é✓", "k": {"nested": [1, [2, [3]]]}}
    return r
'''


def test_results_are_written_as_json_dumps_writes_them(workdir: Path) -> None:
    # The runner encodes with a C encoder built once: same bytes as
    # json.dumps(ensure_ascii=False), lone surrogates \\u-escaped, and the results it
    # cannot encode dead-lettered with json's own message (a cycle included).
    (workdir / "shapes.py").write_text(SHAPES_MODULE)
    records = ["cycle", "set", "surrogate", "floats", "keys", {"plain": [1, "x"]}, "\ufeff",
               "   "]
    lines = [json.dumps(r) for r in records] + ["", "  \t", "\ufeff1", "{bad"]
    (workdir / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = fastpool_cli("run", "shapes:shape", "in.jsonl", "-o", "out.jsonl", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    expected = [json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")
                for v in ("\ud800", [float("nan"), float("inf"), -0.0, 1e300, 0.1],
                          {1: (True, None), 2.5: "é✓", "k": {"nested": [1, [2, [3]]]}},
                          {"plain": [1, "x"]}, "\ufeff", "   ")]
    expected[0] = json.dumps("\ud800").encode()  # not UTF-8: escaped
    assert (workdir / "out.jsonl").read_bytes().splitlines() == expected
    dead = {d["line"]: d for d in _read_jsonl(workdir / "out.jsonl.dead-letter.jsonl")}
    assert sorted(dead) == [1, 2, 11, 12]  # lines 9 and 10 are blank: no record
    assert dead[1]["error"] == "cannot serialize the result: ValueError: Circular reference detected"
    assert dead[2]["error"] == ("cannot serialize the result: TypeError: Object of type set "
                                "is not JSON serializable")
    assert dead[11]["error"].startswith("invalid JSON: Unexpected UTF-8 BOM")
    assert dead[12]["error"].startswith("invalid JSON: Expecting property name")
    assert "2 blank lines skipped" in proc.stderr


@pytest.mark.parametrize("max_line_bytes", [None, 50])
def test_batches_know_the_input_offset_past_each_line(tmp_path: Path,
                                                      max_line_bytes: int | None) -> None:
    # A checkpoint inside a batch (some of its records written) records the offset past
    # the last written line: Batch.end_of(k), computed when needed, never per line.
    import threading

    from fastpool._run_input import LineReader
    from fastpool._run_records import Batch

    lines = [b"1", b"", b"x" * 80, b"\xff\xfe", b"[2, 3]", b"y" * 49, b"last"]
    data = b"\n".join(lines)  # the last line without a newline
    (tmp_path / "in").write_bytes(data)
    ends = [data.index(b"\n", sum(len(x) + 1 for x in lines[:i])) + 1
            for i in range(len(lines) - 1)] + [len(data)]
    seen = 0
    with open(tmp_path / "in", "rb") as f:
        reader = LineReader(f, max_line_bytes)
        while True:
            start = reader.offset
            got = reader.read_batch(3, threading.Event(), lambda: None)
            if got is None:
                break
            batch = Batch(reader.lines - len(got) + 1, start, got, reader.offset)
            assert batch.start == (ends[seen - 1] if seen else 0)
            for k in range(1, len(got) + 1):
                assert batch.end_of(k) == ends[seen + k - 1], (seen, k)
            seen += len(got)
    assert seen == len(lines) and reader.offset == len(data)
