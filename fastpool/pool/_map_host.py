"""What fastpool/_pool_map.py (Pool.map, amap, asubmit) may use of a Pool.

_pool_map imports this protocol (for its annotations), never the Pool: the pool
imports _pool_map, and nothing imports back.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from ..retry import Retry
from ..stats import Stats


class MapHost(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def _shutdown(self) -> bool: ...
    _retry: Retry | None

    def stats(self) -> Stats: ...
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...
    def _default_buffersize(self) -> int: ...
    def _raise_closed(self) -> Any: ...
    def _task(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              opts: Any, retry: Retry | None) -> Any: ...
    def _put(self, task: Any, timeout: float | None, count_rejected: bool = True) -> bool: ...
