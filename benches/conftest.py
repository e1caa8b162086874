"""pytest-benchmark setup for the suites in this directory.

Every case comes from fastpool._bench (the same code `fastpool bench` runs). A bench test
names its case with ``@pytest.mark.benchmark(group=CASE)``; `pytest_generate_tests` then
parametrizes its `impl` argument over the case's implementations (stdlib,
fastpool, mp.ThreadPool, references such as a bare loop), so each group shows them side
by side: ``pytest benches --benchmark-group-by=group`` (the default grouping).

Options: ``--bench-scale`` (problem size factor, default 1 = the full sizes),
``--bench-rounds`` (measured rounds per benchmark, default 5) and ``--bench-fallback``
(also run the pure-Python core as ``fastpool-py``, in a helper process). Results are saved
as JSON under benches/.results (``--benchmark-autosave`` is on by default here).
"""

from __future__ import annotations

import statistics
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pytest_benchmark.logger import PytestBenchmarkWarning

import fastpool
from fastpool import _bench

HERE = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastpool benches")
    group.addoption("--bench-scale", type=float, default=1.0,
                    help="problem size factor (default 1.0 = the full sizes)")
    group.addoption("--bench-rounds", type=int, default=5,
                    help="measured rounds per benchmark (default 5)")
    group.addoption("--bench-fallback", action="store_true",
                    help="also benchmark the pure-Python fallback core (fastpool-py)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before pytest-benchmark reads its options: save every run, next to the benches.
    opt = config.option
    # "Not saving anything, no benchmarks have been run!" (e.g. -k matched only skips)
    # is not an error, whatever the project's filterwarnings=error says. It is raised
    # at session end, under the filters pytest installed before this hook ran, so the
    # filter goes straight into the warnings module rather than into the ini list.
    warnings.filterwarnings("ignore", message="Not saving anything",
                            category=PytestBenchmarkWarning)
    if hasattr(opt, "benchmark_autosave") and not opt.benchmark_disable:
        opt.benchmark_autosave = True
        if opt.benchmark_storage == "file://./.benchmarks":
            opt.benchmark_storage = f"file://{HERE / '.results'}"


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # Suites are named bench_*.py (as the layout says) rather than test_*.py. A file
    # named on the command line is already collected by pytest itself.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)  # type: ignore[no-any-return]
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    info = _bench.machine_info()
    return [f"fastpool benches: {info['implementation']} {info['python']}, {info['cpus']} CPUs, "
            f"{'native' if fastpool.NATIVE else 'pure-Python'} core, "
            f"scale {config.getoption('bench_scale')}, rounds {config.getoption('bench_rounds')}"]


def case_of(node: Any) -> _bench.Case:
    marker = node.get_closest_marker("benchmark")
    return _bench.CASES[marker.kwargs["group"]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "impl" not in metafunc.fixturenames:
        return
    fallback = metafunc.config.getoption("bench_fallback")
    metafunc.parametrize("impl", _bench.implementations(case_of(metafunc.definition), fallback))


@pytest.fixture(scope="session")
def remote() -> Iterator[_bench.Remote]:
    """The helper process that runs cases on the pure-Python core (fastpool-py)."""
    with _bench.Remote() as r:
        yield r


@pytest.fixture
def run_case(request: pytest.FixtureRequest, benchmark: Any) -> Callable[[str], None]:
    """run_case(impl): benchmark this test's case (its group) on one implementation.

    The pool is built and warmed once (not timed); each round is one `run()` of the
    case. pytest-benchmark times the round; the case's own metrics (per-item time,
    % of ideal, RSS, ...) of every round go to extra_info, with their medians.
    """
    case = case_of(request.node)
    scale = request.config.getoption("bench_scale")
    rounds = request.config.getoption("bench_rounds")
    if case.in_subprocess or case.name == "idle-cpu":
        rounds = min(rounds, 3)  # seconds per round; 3 medians are enough here

    def run(impl: str) -> None:
        # The helper process only starts when a fastpool-py benchmark needs it.
        remote = request.getfixturevalue("remote") if impl == "fastpool-py" else None
        samples: list[dict[str, float]] = []
        with _bench.prepare(case, impl, scale, remote) as one_run:
            benchmark.pedantic(lambda: samples.append(dict(one_run())), rounds=rounds,
                               iterations=1, warmup_rounds=0)
        benchmark.extra_info["impl"] = impl
        core = "python" if impl == "fastpool-py" or not fastpool.NATIVE else "native"
        benchmark.extra_info["fastpool core"] = core
        for m in case.metrics:
            values = [s[m.key] for s in samples]
            benchmark.extra_info[f"{m.key} ({m.unit})"] = statistics.median(values)
            benchmark.extra_info[f"{m.key} runs"] = values
        if any(s.get("stopped") for s in samples):
            benchmark.extra_info["stopped at cap"] = True
    return run
