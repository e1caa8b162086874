"""The Pool constructor's arguments, checked and normalised."""

from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple

from .. import _workers
from .._dask import DaskBackend  # imports no dask: see fastpool/_dask.py
from ..cancel import _timeout_seconds
from ..retry import Retry
from ._pacing import Pacer, pacer

# A bounded queue allocates its slots up front (16 bytes each: 256 MiB at this size);
# larger bounds would fail to allocate, or worse, succeed and exhaust memory later.
MAX_QUEUE_SIZE = 1 << 24


class PoolConfig(NamedTuple):
    workers: int
    min_workers: int
    idle_timeout: float | None
    queue_size: int  # 0: unbounded
    retry: Retry | None
    pacer: Pacer | None
    backend: Any  # None, a DaskBackend or a ProcessBackend: call(), default_workers()
    # Run in each worker thread when it starts (None on processes: it runs in each
    # worker process there).
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]


def check_workers(workers: Any) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"`workers` must be an int, got {workers!r}")
    if workers < 1:
        raise ValueError(f"`workers` must be >= 1, got {workers}")


def check_config(workers: int | None, min_workers: int | None, idle_timeout: float | None,
                 queue_size: int | None, retry: Retry | None, rate_limit: Any,
                 copy_context: bool, name: str, initializer: Callable[..., object] | None,
                 initargs: tuple[Any, ...], backend: Any) -> PoolConfig:
    """Pool(...)'s arguments, checked in this order (the first error is raised)."""
    dask: Any = None
    if isinstance(backend, str) or getattr(backend, "_fastpool_processes", False):
        from .._procbackend import process_backend  # imports multiprocessing: only now
        dask = process_backend(backend, initializer, initargs, copy_context, name)
        initializer, initargs = None, ()  # run in each worker process, not thread
    elif backend is not None:
        dask = DaskBackend(backend)
        # Both would run in the local dispatcher threads, not where the tasks run.
        if initializer is not None:
            raise ValueError("`initializer` cannot run on Dask workers from here: use "
                             "client.register_plugin() (or register_worker_callbacks)")
        if copy_context:
            raise ValueError("`copy_context=True` cannot carry contextvars to Dask workers")
    if workers is None:
        workers = _workers.default_max_workers() if dask is None else dask.default_workers()
    check_workers(workers)
    if workers > sys.maxsize:
        raise ValueError(f"`workers` must be <= sys.maxsize, got {workers}")
    if min_workers is None:
        min_workers = 0
    if isinstance(min_workers, bool) or not isinstance(min_workers, int):
        raise TypeError(f"`min_workers` must be an int, got {min_workers!r}")
    if not 0 <= min_workers <= workers:
        raise ValueError(f"`min_workers` must be between 0 and workers ({workers}), "
                         f"got {min_workers}")
    idle_timeout = _timeout_seconds("idle_timeout", idle_timeout)
    if queue_size is None:
        queue_size = 0
    if isinstance(queue_size, bool) or not isinstance(queue_size, int):
        raise TypeError(f"`queue_size` must be an int or None, got {queue_size!r}")
    if queue_size < 0:
        raise ValueError(f"`queue_size` must be >= 0, got {queue_size}")
    if queue_size > MAX_QUEUE_SIZE:
        raise ValueError(f"`queue_size` must be <= {MAX_QUEUE_SIZE} (None: unbounded), "
                         f"got {queue_size}")
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"`retry` must be a Retry or None, got {retry!r}")
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got {name!r}")
    return PoolConfig(workers, min_workers, idle_timeout, queue_size, retry,
                      pacer(rate_limit), dask, initializer, initargs)
