"""The `fastpool` command line, run as users run it: `python -m fastpool ...` in a subprocess.

Each test uses tiny inputs; the whole file takes well under 30 s on a loaded 2-core box.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import fastpool
from cli_support import _env, _read_jsonl, _write_jsonl, fastpool_cli  # noqa: F401

# A user module for `fastpool run`: fails on demand, can be slow, and records calls.
USER_MODULE = '''
import os, time

def double(r):
    if r.get("fail"):
        raise ValueError(f"bad record {r['i']}")
    return {"i": r["i"], "y": r["i"] * 2}

_calls = {}

def flaky(r):
    # Fails on the first attempt of every record, succeeds on the second.
    n = _calls[r["i"]] = _calls.get(r["i"], 0) + 1
    if n == 1:
        raise ConnectionError("try again")
    return r["i"]

def upper(line):
    return line.upper()

def unserializable(r):
    return {1, 2} if r == 2 else r

def slow(r):
    marker = os.environ.get("STARTED_MARKER")
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
    time.sleep(0.1)
    return r

not_callable = 42
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    return tmp_path


def test_version(workdir: Path) -> None:
    proc = fastpool_cli("--version", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"fastpool {fastpool.__version__} (")
    core = "native core" if fastpool.NATIVE else "pure-Python core"
    assert core in proc.stdout


def test_no_command_is_a_usage_error(workdir: Path) -> None:
    proc = fastpool_cli(cwd=workdir)
    assert proc.returncode == 2
    assert "usage: fastpool" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_prints_the_comparison(workdir: Path) -> None:
    proc = fastpool_cli("demo", cwd=workdir, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "concurrent.futures" in out and "tasks/s" in out
    # The ratio line carries a number, e.g. "ratio   12.34x".
    ratio_line = next(line for line in out.splitlines() if line.strip().startswith("ratio"))
    assert float(ratio_line.split()[-1].rstrip("x")) > 0
    # The Pool scenarios, with the numbers the seeded story must produce.
    assert "sent 397/400, retried 26 times, dead letters: 3" in out, out
    assert out.count("after 3 attempts: 550 mailbox unavailable") == 3
    assert "resized 240 images" in out
    assert "ShutdownReport(completed=" in out and "timed_out=True" in out
    assert "Final stats" in out


def test_bench_quick_json_has_a_ratio_for_every_case(workdir: Path) -> None:
    from fastpool import _bench

    proc = fastpool_cli("bench", "--quick", "--json", "--repeat", "1", "--fallback",
                        cwd=workdir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = report["cases"]
    assert {r["case"] for r in rows} == set(_bench.CASES)
    assert report["machine"]["native"] == fastpool.NATIVE
    for row in rows:
        med = row["median"]
        # --fallback: the pure-Python core ran beside the executor, in a helper process.
        assert ("fastpool-py" in med) == ("fastpool" in med), row
        assert row["baseline"] in med and row["subject"] in med, row
        assert all(v >= 0 for v in med.values()), row
        if med[row["subject"]] > 0:  # an idle pool may measure exactly 0 % CPU
            assert isinstance(row["ratio"], float) and row["ratio"] > 0, row
        assert len(row["runs"][row["subject"]]) == 1


def test_bench_table(workdir: Path) -> None:
    proc = fastpool_cli("bench", "--quick", "--repeat", "1", "--case", "submit",
                        "--case", "pool-extras", cwd=workdir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    header, rule, submit, extras = proc.stdout.splitlines()[:4]
    assert header.split() == ["case", "metric", "stdlib", "fastpool", "ratio", "others"]
    assert set(rule) == {"-"}
    assert submit.startswith("submit ") and "us/task" in submit
    assert float(submit.split()[4].rstrip("x")) > 0  # the ratio column
    # The Pool row names its own baseline, the bare executor.
    assert extras.startswith("pool-extras (fastpool.Pool vs fastpool)")
    assert "medians of 1 interleaved runs" in proc.stdout.lower()


def test_bench_speaks_to_users_and_prints_the_table_first(workdir: Path) -> None:
    # No internal issue numbers or project targets in the help, the table or the JSON;
    # stdout is the table alone, and stderr (not a terminal here) stays quiet unless
    # --verbose asks for every run's metrics.
    help_text = fastpool_cli("bench", "--help", cwd=workdir).stdout
    assert "--verbose" in help_text
    args = ("bench", "--quick", "--repeat", "1", "--case", "submit", "--case", "latency")
    quiet = fastpool_cli(*args, cwd=workdir, timeout=120)
    verbose = fastpool_cli(*args, "--verbose", cwd=workdir, timeout=120)
    as_json = fastpool_cli(*args, "--json", cwd=workdir, timeout=120)
    for proc in (quiet, verbose, as_json):
        assert proc.returncode == 0, proc.stderr
    for text in (help_text, quiet.stdout, verbose.stdout, as_json.stdout):
        assert not re.search(r"issue|target", text, re.IGNORECASE), text
    assert quiet.stdout.startswith("case ") and quiet.stderr == ""
    assert verbose.stdout.startswith("case ")
    runs = [line for line in verbose.stderr.splitlines() if line.startswith("  ")]
    assert len(runs) == 2 * 3, verbose.stderr  # 2 cases x (stdlib, fastpool, mp.ThreadPool)


def test_bench_chart_labels_its_bars_and_keeps_capped_ratios_apart() -> None:
    from fastpool import _bench_report

    def row(case: str, ratio: float, stopped: list[str]) -> dict[str, object]:
        return {"case": case, "metric": "time", "unit": "us", "baseline": "stdlib",
                "subject": "fastpool", "median": {"stdlib": ratio, "fastpool": 1.0},
                "stopped": stopped, "ratio": ratio}

    report = {"machine": {"platform": "p", "cpus": 2, "implementation": "CPython",
                          "python": "3", "fastpool": "0", "native": True},
              "repeat": 5, "scale": 1.0,
              "cases": [row("a", 14.5, []), row("b", 0.81, []), row("c", 78000.0, ["stdlib"])]}
    fig = _bench_report.figure(report)
    measured, capped = fig.axes
    assert [t.get_text() for t in measured.texts] == ["14.50x", "0.81x"]
    assert [t.get_text() for t in capped.texts] == [">= 78000x"]
    assert measured.get_ylim()[1] < 1000  # the capped bar does not set this scale


def test_bench_rejects_unknown_case_and_plot_without_matplotlib(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    proc = fastpool_cli("bench", "--quick", "--case", "nope", cwd=workdir)
    assert proc.returncode == 2
    assert "unknown case 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    # Without matplotlib (None in sys.modules makes its import fail): refused up front,
    # with the extra to install, before anything is measured.
    from fastpool import cli
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["bench", "--quick", "--plot", str(workdir / "x.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (workdir / "x.png").exists()


def test_bench_plot_writes_a_png(workdir: Path) -> None:
    proc = fastpool_cli("bench", "--quick", "--repeat", "1", "--case", "submit",
                        "--plot", str(workdir / "x.png"), cwd=workdir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "x.png").read_bytes().startswith(b"\x89PNG")


def test_run_keeps_input_order_and_dead_letters_failures(workdir: Path) -> None:
    records = [{"i": i, "fail": i % 17 == 3} for i in range(300)]
    _write_jsonl(workdir / "in.jsonl", records)
    with open(workdir / "in.jsonl", "a") as f:
        f.write("\n{not json\n")  # a blank line (skipped) and a broken record
    proc = fastpool_cli("run", "usermod:double", "in.jsonl", "-o", "out.jsonl",
                        "--workers", "4", "--retries", "1", "--backoff", "0",
                        "--dead-letter", "dead.jsonl", cwd=workdir)
    assert proc.returncode == 1, proc.stderr  # some records failed
    out = _read_jsonl(workdir / "out.jsonl")
    assert out == [{"i": r["i"], "y": r["i"] * 2} for r in records if not r["fail"]]
    dead = _read_jsonl(workdir / "dead.jsonl")
    failed = [r for r in records if r["fail"]]
    assert [d["record"] for d in dead[:-1]] == failed
    assert all(d["attempts"] == 2 and d["error"] == f"ValueError: bad record {d['record']['i']}"
               for d in dead[:-1])
    assert dead[-1]["record"] == "{not json" and dead[-1]["attempts"] == 0
    assert dead[-1]["error"].startswith("invalid JSON")
    assert dead[-1]["line"] == 302
    assert "failed -> dead.jsonl" in proc.stderr


def test_run_retries_then_succeeds(workdir: Path) -> None:
    _write_jsonl(workdir / "in.jsonl", [{"i": i} for i in range(20)])
    proc = fastpool_cli("run", "usermod:flaky", "in.jsonl", "-o", "out.jsonl",
                        "--retries", "1", "--backoff", "0.001", "--progress", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert _read_jsonl(workdir / "out.jsonl") == list(range(20))
    assert "fastpool run: 100%, 20 ok, 0 failed, 0 in flight" in proc.stderr
    assert "fastpool run: 20 succeeded in" in proc.stderr
    assert not (workdir / "out.jsonl.dead-letter.jsonl").exists()
    # Without retries every record fails, and goes to the default dead-letter file.
    proc = fastpool_cli("run", "usermod:flaky", "in.jsonl", "-o", "out2.jsonl", cwd=workdir)
    assert proc.returncode == 1
    assert len(_read_jsonl(workdir / "out2.jsonl.dead-letter.jsonl")) == 20


def test_run_unserializable_result_is_a_failure(workdir: Path) -> None:
    proc = fastpool_cli("run", "usermod:unserializable", "-", "--dead-letter", "dead.jsonl",
                        cwd=workdir, stdin="1\n2\n3\n")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "1\n3\n"
    [dead] = _read_jsonl(workdir / "dead.jsonl")
    assert dead["record"] == 2 and dead["line"] == 2 and dead["attempts"] == 1
    assert dead["error"].startswith("cannot serialize the result: TypeError")


def test_run_lines_from_stdin_to_stdout(workdir: Path) -> None:
    proc = fastpool_cli("run", "usermod:upper", "-", "--format", "lines", "--rate", "1000",
                        cwd=workdir, stdin="alpha\nbeta\ngamma")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ALPHA\nBETA\nGAMMA\n"


def test_run_file_path_target(workdir: Path) -> None:
    proc = fastpool_cli("run", str(workdir / "usermod.py") + ":upper", "-", "--format", "lines",
                        cwd=workdir, stdin="x\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "X\n"


@pytest.mark.parametrize("target, message", [
    ("nosuchmodule_xyz:f", "no module named 'nosuchmodule_xyz'"),
    ("usermod:nosuch", "module 'usermod' has no attribute 'nosuch'"),
    ("usermod:not_callable", "'usermod:not_callable' is not callable"),
    ("usermod", "expected MODULE:FUNC, got 'usermod'"),
])
def test_run_bad_target_exits_2(workdir: Path, target: str, message: str) -> None:
    (workdir / "in.jsonl").write_text("1\n")
    proc = fastpool_cli("run", target, "in.jsonl", cwd=workdir)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "fastpool.dead-letter.jsonl").exists()


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--retries", "-1"], "argument --retries: must be >= 0, got -1"),
    (["--rate", "fast"], "argument --rate: expected a number, got 'fast'"),
    (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["--metrics-port", "65536"], "argument --metrics-port: must be <= 65535, got 65536"),
    (["--metrics-port", "-1"], "argument --metrics-port: must be >= 0, got -1"),
])
def test_run_bad_options_exit_2(workdir: Path, args: list[str], message: str) -> None:
    (workdir / "in.jsonl").write_text("1\n")
    proc = fastpool_cli("run", "usermod:double", "in.jsonl", *args, cwd=workdir)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_run_missing_input_exits_2(workdir: Path) -> None:
    proc = fastpool_cli("run", "usermod:double", "missing.jsonl", cwd=workdir)
    assert proc.returncode == 2
    assert "cannot open INPUT" in proc.stderr and "missing.jsonl" in proc.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_accounts_for_every_record(workdir: Path, signum: int) -> None:
    n = 400
    lines = [json.dumps({"i": i}) for i in range(n)]
    (workdir / "in.jsonl").write_text("\n".join(lines) + "\n")
    marker = workdir / "started"
    cmd = [sys.executable, "-I", "-m", "fastpool", "run", "usermod:slow", "in.jsonl",
           "-o", "out.jsonl", "--workers", "4", "--grace", "20"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=_env(STARTED_MARKER=str(marker)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.01)
        time.sleep(0.2)  # a few records done, many still to go (400 x 0.1 s / 4 = 10 s)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, stderr
    out = (workdir / "out.jsonl").read_text().splitlines()
    unprocessed = (workdir / "out.jsonl.unprocessed").read_text().splitlines()
    assert not (workdir / "out.jsonl.dead-letter.jsonl").exists()
    # Interrupted for real, and nothing lost or duplicated: results are a prefix of the
    # input, in order, and the raw unprocessed lines are exactly the rest.
    assert 0 < len(out) < n
    assert out + unprocessed == lines
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert f"{len(unprocessed)} unprocessed" in stderr

    # Resuming on the unprocessed file completes the job.
    proc2 = fastpool_cli("run", "usermod:double", "out.jsonl.unprocessed", "-o", "rest.jsonl",
                         "--workers", "4", cwd=workdir)
    assert proc2.returncode == 0, proc2.stderr
    done = [json.loads(x)["i"] for x in out] + [r["i"] for r in _read_jsonl(workdir / "rest.jsonl")]
    assert done == list(range(n))


def _scrape(url: str) -> dict[str, float]:
    """The run's samples: {"fastpool_tasks_submitted_total": 3.0, "failed": 1.0, ...}
    (the pool's, and the records' by outcome under the outcome's name)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("pool") == "fastpool-run":
                samples[s.name] = s.value
            elif s.name == "fastpool_run_records_total":
                samples[s.labels["outcome"]] = s.value
    return samples


def test_run_serves_metrics_while_running(workdir: Path) -> None:
    cmd = [sys.executable, "-I", "-m", "fastpool", "run", "usermod:double", "-",
           "-o", "out.jsonl", "--workers", "2", "--retries", "1", "--backoff", "0",
           "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stderr is not None
        first = proc.stderr.readline()  # printed before any record is read
        match = re.search(r"metrics on (http://\S+)", first)
        assert match, first + proc.communicate(timeout=30)[1]
        url = match.group(1)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")  # the real host
        records = [{"i": 0}, {"i": 1}, {"i": 2, "fail": True}, {"i": 3}]
        proc.stdin.write("".join(json.dumps(r) + "\n" for r in records) + "{bad json\n")
        proc.stdin.flush()
        # The input is still open: these are the live counters of the running run.
        deadline = time.monotonic() + 30
        while (samples := _scrape(url)).get("succeeded", 0) + samples.get("failed", 0) < 5:
            assert time.monotonic() < deadline, samples
            time.sleep(0.02)
        # Records by outcome: the line rejected before reaching FUNC counts as failed.
        assert samples["succeeded"] == 3 and samples["failed"] == 2, samples
        assert samples["unprocessed"] == 0
        # The pool's own metrics are there too (its tasks are batches of records).
        assert samples["fastpool_tasks_submitted_total"] >= 1
        assert samples["fastpool_tasks_dead_lettered_total"] == 1  # after its retry
        assert samples["fastpool_workers"] >= 1
        _, stderr = proc.communicate(timeout=30)  # closes the input: the run ends
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 1, stderr  # records dead-lettered
    assert [r["i"] for r in _read_jsonl(workdir / "out.jsonl")] == [0, 1, 3]
    with pytest.raises(urllib.error.URLError):  # the server stopped with the run
        urllib.request.urlopen(url, timeout=10)


def test_run_metrics_host(workdir: Path) -> None:
    (workdir / "in.jsonl").write_text("1\n")
    proc = fastpool_cli("run", "usermod:unserializable", "in.jsonl", "-o", "out.jsonl",
                        "--metrics-port", "0", "--metrics-host", "localhost", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"metrics on http://(127\.0\.0\.1|\[::1\]):\d+/metrics", proc.stderr), \
        proc.stderr
    proc = fastpool_cli("run", "usermod:unserializable", "in.jsonl", "-o", "out.jsonl",
                        "--metrics-port", "0", "--metrics-host", "no.such.host.invalid",
                        cwd=workdir)
    assert proc.returncode == 2 and "cannot serve metrics" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_metrics_port_in_use_exits_2(workdir: Path) -> None:
    (workdir / "in.jsonl").write_text("1\n")
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = fastpool_cli("run", "usermod:double", "in.jsonl", "--metrics-port", str(port),
                            cwd=workdir)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot serve metrics on port {port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_metrics_port_without_the_extra_exits_2(workdir: Path, monkeypatch, capsys) -> None:
    (workdir / "in.jsonl").write_text("1\n")
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "fastpool.metrics", raising=False)
    from fastpool import cli

    code = cli.main(["run", str(workdir / "usermod.py") + ":double", str(workdir / "in.jsonl"),
                     "-o", str(workdir / "out.jsonl"), "--metrics-port", "0"])
    assert code == 2
    assert "pip install 'fastpool[metrics]'" in capsys.readouterr().err
    assert not (workdir / "out.jsonl").exists()  # nothing was opened


def test_run_unopenable_out_exits_2_and_closes_input(workdir: Path, capsys) -> None:
    # In-process, so that an INPUT left open shows as a ResourceWarning when collected.
    import gc
    import warnings

    from fastpool import cli

    (workdir / "in.jsonl").write_text("1\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(["run", str(workdir / "usermod.py") + ":double",
                         str(workdir / "in.jsonl"), "-o", str(workdir / "no-such-dir" / "o.jsonl")])
        assert code == 2  # main() returns the code, as it promises (no SystemExit)
        gc.collect()
    err = capsys.readouterr().err
    assert "cannot write OUT: no such directory" in err
    assert len(err.splitlines()) == 1, err  # one line
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


# A FUNC that notes which SIGTERM handler is installed while records run, and on
# record 3 sends SIGTERM to its own process.
SIGNAL_MODULE = '''
import os, signal

def note_handler(r):
    handler = signal.getsignal(signal.SIGTERM)
    with open(os.path.join(os.path.dirname(__file__), "handler.txt"), "w") as f:
        f.write(getattr(handler, "__module__", None) or repr(handler))
    if r == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return r
'''


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_run_leaves_signals_to_its_pool_and_main_returns_their_code(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # In-process: `run` installs no handler of its own beside Pool.handle_signals (the
    # pool's shutdown gives --grace and a second signal cuts it short), main() returns
    # 128 + SIGTERM rather than exiting, and the previous handler is back afterwards.
    from fastpool import cli

    (workdir / "sigmod.py").write_text(SIGNAL_MODULE)
    (workdir / "in.jsonl").write_text("".join(f"{i}\n" for i in range(1, 6)))
    before = signal.getsignal(signal.SIGTERM)
    code = cli.main(["run", str(workdir / "sigmod.py") + ":note_handler",
                     str(workdir / "in.jsonl"), "-o", str(workdir / "out.jsonl"),
                     "--workers", "1", "--no-progress"])
    assert code == 128 + signal.SIGTERM, capsys.readouterr().err
    assert (workdir / "handler.txt").read_text().startswith("fastpool.pool")
    assert signal.getsignal(signal.SIGTERM) is before
    out = (workdir / "out.jsonl").read_text().split()
    # The records after the signal may all be done before the run stops reading:
    # then there is rightly no unprocessed file.
    unprocessed = workdir / "out.jsonl.unprocessed"
    un = unprocessed.read_text().split() if unprocessed.exists() else []
    assert sorted(out + un, key=int) == [str(i) for i in range(1, 6)]
    assert "interrupted by SIGTERM" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_run_names_a_signal_whose_shutdown_stopped_it_first(
        workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The pool's shutdown starts as the signal comes, so the runner may meet its effect
    # (a refused submit) before it looks at pool.signal_received: still 128 + SIGTERM.
    from fastpool import cli
    from fastpool._run_input import LineReader

    read_batch = LineReader.read_batch
    calls = []

    def signal_while_reading(self: LineReader, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the pool's watcher shuts it down meanwhile
        return read_batch(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LineReader, "read_batch", signal_while_reading)
    (workdir / "in.jsonl").write_text("".join(f'{{"i": {i}}}\n' for i in range(5)))
    code = cli.main(["run", str(workdir / "usermod.py") + ":double", str(workdir / "in.jsonl"),
                     "-o", str(workdir / "out.jsonl"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err
