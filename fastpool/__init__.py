"""fastpool: a fast worker pool for Python with a native core.

`ThreadPoolExecutor` is a drop-in for concurrent.futures.ThreadPoolExecutor;
`NATIVE` tells whether the compiled core (True) or the pure-Python fallback is in use.
"""

from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    as_completed,
    wait,
)
from typing import TYPE_CHECKING

from ._pick_core import NATIVE, core
from .executor import BrokenThreadPool, ThreadPoolExecutor
from .cancel import CancelToken, current_token
from .deadletter import DeadLetter
from .errors import DeadlineExceeded, QueueFull
from .pool import Pool, ShutdownReport, Task
from .retry import Retry
from .stats import Stats

Future = core.Future

if TYPE_CHECKING:
    from ._procbackend import ProcessBackend, WorkerCrashed
    from .process import ProcessPoolExecutor


def __getattr__(name: str) -> object:
    # ProcessPoolExecutor imports multiprocessing (~30 ms): only for those who use it.
    if name == "ProcessPoolExecutor":
        from .process import ProcessPoolExecutor
        return ProcessPoolExecutor
    if name in ("ProcessBackend", "WorkerCrashed"):  # Pool(backend="processes")
        from . import _procbackend
        return getattr(_procbackend, name)
    raise AttributeError(f"module 'fastpool' has no attribute {name!r}")


# The one place the version is written: pyproject.toml reads it from here (statically).
__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "NATIVE",
    "BrokenThreadPool",
    "CancelToken",
    "CancelledError",
    "DeadLetter",
    "DeadlineExceeded",
    "Future",
    "Pool",
    "ProcessBackend",
    "ProcessPoolExecutor",
    "QueueFull",
    "Retry",
    "ShutdownReport",
    "Stats",
    "Task",
    "ThreadPoolExecutor",
    "WorkerCrashed",
    "__version__",
    "as_completed",
    "current_token",
    "wait",
]
