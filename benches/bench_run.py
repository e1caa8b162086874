"""`fastpool run` against a hand-written loop: the runner's own cost per record.

Target: `fastpool run` with an identity function over a file of JSON lines within 1.5x
the time of a single-thread `json.loads`/`json.dumps` loop over the same file (what a
user would write instead). Both run in this process, interleaved round by round, on the
same 200k-line file (`--bench-scale` scales it); the ratio of the medians is printed and
kept in extra_info ("ratio"). `fastpool run` runs as `fastpool.cli.main(...)` does for
the command line, its journal included, without the interpreter's start-up.

Quick look without pytest: `python benches/bench_run.py [LINES] [ROUNDS]`.

`run-cpu` (issue 12): a CPU-bound FUNC (a pure-Python loop of ~50 us per record) over
20k JSON lines on 2 workers: `fastpool run --processes` against the thread run and a
serial loop, interleaved round by round, worker start-up included (every run pays it).
The speed-ups over the serial loop are printed and kept in extra_info, with the load
average (on a shared machine the ratios mean little without it). Without pytest:
`python benches/bench_run.py cpu [LINES] [ROUNDS]`; in CPU time (the serial loop's, the
parent's and the workers'), which a loaded machine does not distort:
`python benches/bench_run.py cpu-accounting [LINES] [ROUNDS]`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from fastpool import cli

LINES = 200_000


def identity(record: Any) -> Any:
    return record


def make_input(path: Path, lines: int) -> None:
    with open(path, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"id": i, "user": f"user-{i % 977}", "score": i * 0.25,
                                "tags": ["a", "b"], "active": i % 3 == 0}) + "\n")


def hand_loop(src: Path, dst: Path) -> None:
    """What `fastpool run` is measured against: parse, call, encode, write (as a user
    would write it: text files, UTF-8 decoded and encoded by io in bulk)."""
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for line in fin:
            fout.write(json.dumps(identity(json.loads(line))) + "\n")


def fastpool_run(src: Path, dst: Path) -> None:
    code = cli.main(["run", f"{__file__}:identity", str(src), "-o", str(dst),
                     "--no-progress"])
    assert code == 0, code


def interleaved(src: Path, out: Path, rounds: int,
                on_round: Callable[[float, float], None] | None = None
                ) -> tuple[float, float]:
    """Median seconds of the loop and of `fastpool run`, rounds interleaved."""
    loop_t: list[float] = []
    run_t: list[float] = []
    for _ in range(rounds):
        for impl, times in ((hand_loop, loop_t), (fastpool_run, run_t)):
            started = time.perf_counter()
            impl(src, out)
            times.append(time.perf_counter() - started)
        if on_round is not None:
            on_round(loop_t[-1], run_t[-1])
    return statistics.median(loop_t), statistics.median(run_t)


@pytest.fixture(scope="module")
def input_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Path:
    lines = max(1000, int(LINES * request.config.getoption("bench_scale")))
    path = tmp_path_factory.mktemp("run") / "in.jsonl"
    make_input(path, lines)
    return path


@pytest.mark.benchmark(group="run-jsonl")
def test_run_identity_jsonl(benchmark: Any, input_file: Path, tmp_path: Path,
                            request: pytest.FixtureRequest) -> None:
    # pytest-benchmark times `fastpool run`; the loop runs (timed by hand) just before
    # each round, so both see the same machine state.
    out = tmp_path / "out.jsonl"
    loop_times: list[float] = []

    def setup() -> None:
        started = time.perf_counter()
        hand_loop(input_file, tmp_path / "loop.jsonl")
        loop_times.append(time.perf_counter() - started)

    benchmark.pedantic(fastpool_run, args=(input_file, out), setup=setup,
                       rounds=request.config.getoption("bench_rounds"), iterations=1)
    assert out.read_bytes() == (tmp_path / "loop.jsonl").read_bytes()
    loop = statistics.median(loop_times)
    run = benchmark.stats.stats.median
    benchmark.extra_info.update({"loop (s)": loop, "loop runs": loop_times,
                                 "ratio": run / loop, "target ratio": 1.5})
    print(f"\nfastpool run {run:.3f} s, hand-written loop {loop:.3f} s: "
          f"ratio {run / loop:.2f} (target <= 1.5)")


# -- run-cpu: --processes for a CPU-bound function -------------------------------------

CPU_LINES = 20_000
CPU_MODULE = """
def cpu(record):
    x = 0
    for i in range(record["n"]):  # ~50 us of pure Python
        x += i * i
    return {"id": record["id"], "x": x}
"""


def make_cpu_input(directory: Path, lines: int, n: int = 1000) -> tuple[Path, str]:
    """The input file and the target (a module file, importable in worker processes)."""
    module = directory / "cpu_mod.py"
    module.write_text(CPU_MODULE)
    src = directory / "cpu.jsonl"
    with open(src, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"id": i, "n": n, "user": f"user-{i % 977}"}) + "\n")
    return src, f"{module}:cpu"


def _load(target: str) -> Callable[[Any], Any]:
    from fastpool.run import load_function
    return load_function(target)


def cpu_serial(target: str, src: Path, dst: Path) -> None:
    func = _load(target)
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for line in fin:
            fout.write(json.dumps(func(json.loads(line)), ensure_ascii=False) + "\n")


def cpu_run(target: str, src: Path, dst: Path, *extra: str) -> None:
    code = cli.main(["run", target, str(src), "-o", str(dst), "--no-progress",
                     "--workers", "2", *extra])
    assert code == 0, code


CPU_IMPLS: dict[str, Callable[[str, Path, Path], None]] = {
    "serial": cpu_serial,
    "threads": cpu_run,
    "processes": lambda target, src, dst: cpu_run(target, src, dst, "--processes"),
}


def cpu_interleaved(directory: Path, lines: int, rounds: int,
                    on_round: Callable[[dict[str, float]], None] | None = None
                    ) -> dict[str, list[float]]:
    """Seconds of each implementation per round, rounds interleaved; the outputs equal."""
    src, target = make_cpu_input(directory, lines)
    times: dict[str, list[float]] = {name: [] for name in CPU_IMPLS}
    for name in CPU_IMPLS:
        times[name + " cpu"] = []
    for _ in range(rounds):
        for name, impl in CPU_IMPLS.items():
            started, cpu = time.perf_counter(), time.process_time()
            impl(target, src, directory / f"{name}.jsonl")
            times[name].append(time.perf_counter() - started)
            # This process's CPU (threads included, worker processes not): what the
            # parent spends per record bounds the speed-up of --processes.
            times[name + " cpu"].append(time.process_time() - cpu)
        if on_round is not None:
            on_round({name: t[-1] for name, t in times.items()})
    out = {(directory / f"{name}.jsonl").read_bytes() for name in CPU_IMPLS}
    assert len(out) == 1, "the outputs differ"
    return times


def cpu_report(times: dict[str, list[float]], lines: int) -> dict[str, float]:
    med = {name: statistics.median(t) for name, t in times.items()}
    return {**{f"{name} (s)": m for name, m in med.items()},
            "serial (us/record)": med["serial"] / lines * 1e6,
            "parent cpu of processes (us/record)": med["processes cpu"] / lines * 1e6,
            "processes vs serial": med["serial"] / med["processes"],
            "threads vs serial": med["serial"] / med["threads"],
            "processes vs threads": med["threads"] / med["processes"],
            "load average (1 min)": os.getloadavg()[0]}


@pytest.mark.benchmark(group="run-cpu")
def test_run_cpu_processes(benchmark: Any, tmp_path: Path,
                           request: pytest.FixtureRequest) -> None:
    lines = max(1000, int(CPU_LINES * request.config.getoption("bench_scale")))
    rounds = request.config.getoption("bench_rounds")
    times = cpu_interleaved(tmp_path, lines, rounds)
    # pytest-benchmark records the --processes rounds (timed above, interleaved).
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.stats.stats.data[:] = times["processes"]
    report = cpu_report(times, lines)
    benchmark.extra_info.update(report)
    benchmark.extra_info.update({f"{name} runs": t for name, t in times.items()})
    print("\n" + ", ".join(f"{k} {v:.3g}" for k, v in report.items()))


def _main_cpu(argv: list[str]) -> None:
    lines = int(argv[0]) if argv else CPU_LINES
    rounds = int(argv[1]) if len(argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        times = cpu_interleaved(
            Path(tmp), lines, rounds,
            lambda r: print("  " + ", ".join(f"{k} {v:.3f} s" for k, v in r.items())
                            + f" (load {os.getloadavg()[0]:.1f})", file=sys.stderr))
    report = cpu_report(times, lines)
    print(f"{lines} lines, medians of {rounds}: "
          + ", ".join(f"{k} {v:.3g}" for k, v in report.items()))


def _main_cpu_accounting(argv: list[str]) -> None:
    """CPU time rather than wall time (a loaded shared machine starves every wall-clock
    run): the serial loop's, the parent's and the workers' of `--processes`. The workers
    are spawned (the program's start method, which the backend follows), so they are
    this process's children and their CPU is counted when the pool reaps them."""
    import multiprocessing
    import resource

    def children() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    multiprocessing.set_start_method("spawn")
    lines = int(argv[0]) if argv else CPU_LINES
    rounds = int(argv[1]) if len(argv) > 1 else 3
    rows: dict[str, list[float]] = {"serial": [], "parent": [], "workers": []}
    with tempfile.TemporaryDirectory() as tmp:
        src, target = make_cpu_input(Path(tmp), lines)
        for _ in range(rounds):
            cpu = time.process_time()
            cpu_serial(target, src, Path(tmp) / "serial.jsonl")
            rows["serial"].append(time.process_time() - cpu)
            cpu, kids = time.process_time(), children()
            cpu_run(target, src, Path(tmp) / "processes.jsonl", "--processes")
            rows["parent"].append(time.process_time() - cpu)
            rows["workers"].append(children() - kids)
    med = {name: statistics.median(t) for name, t in rows.items()}
    bound = med["serial"] / max(med["parent"], med["workers"] / 2)
    print(f"{lines} lines, medians of {rounds}, CPU per record: serial loop "
          f"{med['serial'] / lines * 1e6:.1f} us; --processes: parent "
          f"{med['parent'] / lines * 1e6:.1f} us, 2 workers {med['workers'] / lines * 1e6:.1f} us "
          f"(their start-up included); bound on 2 idle cores {bound:.2f}x the serial loop")


if __name__ == "__main__" and sys.argv[1:2] == ["cpu"]:
    _main_cpu(sys.argv[2:])
elif __name__ == "__main__" and sys.argv[1:2] == ["cpu-accounting"]:
    _main_cpu_accounting(sys.argv[2:])
elif __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else LINES
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        make_input(src, n)
        loop, run = interleaved(src, Path(tmp) / "out.jsonl", rounds,
                                lambda a, b: print(f"  loop {a:.3f} s, run {b:.3f} s",
                                                   file=sys.stderr))
    print(f"{n} lines, medians of {rounds}: loop {loop:.3f} s, fastpool run {run:.3f} s, "
          f"ratio {run / loop:.2f} (target <= 1.5)")
