"""`fastpool run` against a hand-written loop: the runner's own cost per record.

Target: `fastpool run` with an identity function over a file of JSON lines within 1.5x
the time of a single-thread `json.loads`/`json.dumps` loop over the same file (what a
user would write instead). Both run in this process, interleaved round by round, on the
same 200k-line file (`--bench-scale` scales it); the ratio of the medians is printed and
kept in extra_info ("ratio"). `fastpool run` runs as `fastpool.cli.main(...)` does for
the command line, its journal included, without the interpreter's start-up.

Quick look without pytest: `python benches/bench_run.py [LINES] [ROUNDS]`.
"""

from __future__ import annotations

import json
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


if __name__ == "__main__":
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
