"""The package is fully typed: mypy --strict passes on it and on code using its API.

Runs on the *installed* package (its .py files, the _core.pyi stub of the extension and
py.typed), wherever the tests are run from.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastpool

mypy = pytest.importorskip("mypy", reason="mypy is in the test extra")

CONFIG = """\
[mypy]
strict = True
cache_dir = {cache}
mypy_path = {path}

[mypy-matplotlib.*,tqdm.*,distributed.*]
ignore_missing_imports = True
"""

USAGE = '''\
import asyncio
from concurrent.futures import Future, as_completed

from fastpool import CancelToken, Pool, Retry, ShutdownReport, Stats, ThreadPoolExecutor
from fastpool.metrics import MetricsServer, PoolCollector, register, unregister
from prometheus_client import CollectorRegistry


def double(x: int) -> int:
    return 2 * x


with ThreadPoolExecutor(max_workers=2) as ex:
    fut: Future[int] = ex.submit(double, 21)
    total: int = sum(f.result() for f in as_completed([fut]))
    doubled: list[int] = list(ex.map(double, range(10), buffersize=4))

with Pool(2, queue_size=8, retry=Retry(attempts=2)) as pool:
    maybe = pool.try_submit(double, 1)
    if maybe is not None:
        print(maybe.result())
    token = CancelToken(timeout=5.0)
    pool.schedule(double, (2,), token=token, key="k").result()
    stats: Stats = pool.stats()
    print(stats.submitted, len(pool.dead_letters))

registry = CollectorRegistry()
with Pool(1, name="typed") as mpool:
    collector: PoolCollector = register(mpool, registry)
    pools: dict[str, Pool] = collector.pools
    value: float | None = registry.get_sample_value("fastpool_workers", {"pool": "typed"})
    unregister(mpool, registry)
    with MetricsServer(0, "127.0.0.1", max_connections=4, idle_timeout=2.5) as server:
        server.add(mpool, name="served")
        url: str = server.url
        port: int = server.port
        served: CollectorRegistry = server.registry
        server.remove(mpool)

report: ShutdownReport = Pool(1).shutdown(timeout=1.0)
print(report.completed, [t.key for t in report.not_started])


async def main() -> int:
    with Pool(2) as p:
        return await p.asubmit(double, 4)

print(asyncio.run(main()))
'''


def run_mypy(tmp_path, *targets):
    config = tmp_path / "mypy.ini"
    # An editable install is invisible to mypy (an import hook): point mypy_path at the
    # source tree then. An installed package is found as usual (and mypy refuses
    # site-packages on its path).
    parent = Path(fastpool.__file__).resolve().parent.parent
    path = "" if parent.name in ("site-packages", "dist-packages") else str(parent)
    config.write_text(CONFIG.format(cache=tmp_path / "cache", path=path))
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config),
                           "--no-error-summary", *targets],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_package_passes_mypy_strict(tmp_path):
    package = Path(fastpool.__file__).parent
    assert (package / "py.typed").exists()
    assert (package / "_core.pyi").exists()
    # Package mode: mypy resolves the installed package (a directory inside site-packages
    # given as a path confuses it with the modules around it).
    proc = run_mypy(tmp_path, "-p", "fastpool")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_public_api_usage_type_checks(tmp_path):
    script = tmp_path / "usage.py"
    script.write_text(textwrap.dedent(USAGE))
    proc = run_mypy(tmp_path, str(script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ...and it really runs.
    run = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
