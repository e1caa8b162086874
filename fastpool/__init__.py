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

from ._compat import NATIVE, core
from .executor import BrokenThreadPool, ThreadPoolExecutor

Future = core.Future

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "NATIVE",
    "BrokenThreadPool",
    "CancelledError",
    "Future",
    "ThreadPoolExecutor",
    "__version__",
    "as_completed",
    "wait",
]
