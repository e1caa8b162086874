"""Pool(backend=<dask.distributed.Client>): the Pool's tasks run on a Dask cluster.

Everything but the call stays local: the queue and its backpressure, retries and their
timer, dead letters, tokens and deadlines, stats and shutdown reports. The pool's worker
threads become dispatchers: each takes a task, ships the call with `client.submit` and
waits for the result, so `workers` bounds the calls in flight on the cluster. A remote
exception comes back with its own type (Retry(retry_on=...) works unchanged). When the
task's governing token is cancelled (shutdown timeout, deadline, the caller's token), the
dispatcher cancels the Dask future and the task ends as the thread backend's would.

distributed is imported by nobody here: a Client can only exist if the user imported it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from concurrent.futures import CancelledError
from typing import Any, Callable

from .cancel import CancelToken

EXTRA_HINT = "pip install 'fastpool[dask]'"
# A dispatcher waiting for a call looks at its Dask future and client this often (s).
_CHECK_EVERY = 0.5


def _client_class() -> Any:
    # Never imports distributed: without it in sys.modules no Client object exists.
    mod = sys.modules.get("distributed")
    return None if mod is None else getattr(mod, "Client", None)


class DaskBackend:
    """Runs calls on the cluster of a dask.distributed.Client (which the user owns)."""

    def __init__(self, client: Any) -> None:
        cls = _client_class()
        if cls is None or not isinstance(client, cls):
            raise TypeError(f"`backend` must be None or a dask.distributed.Client, got "
                            f"{client!r} (the Dask backend needs {EXTRA_HINT})")
        if client.asynchronous:
            # Its methods return coroutines for one event loop; dispatchers are threads.
            raise ValueError("`backend` must be a synchronous Client "
                             "(Client(asynchronous=True) is not supported)")
        if client.status != "running":
            raise ValueError(f"`backend` must be a running Client, got one {client.status!r}")
        self.client = client

    def _closing(self) -> bool:
        return self.client.status in ("closing", "closed")

    def default_workers(self) -> int:
        """Calls in flight by default: one per thread of the cluster right now."""
        return max(1, int(sum(self.client.nthreads().values())))

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             token: CancelToken) -> Any:
        """Run fn(*args, **kwargs) on the cluster; raise CancelledError if `token` is
        cancelled first (the remote call is cancelled too)."""
        if kwargs:
            # client.submit takes some keyword arguments for itself (key, workers,
            # priority, retries, ...): the call's own go inside the function.
            fn = functools.partial(fn, **kwargs)
        # pure=False: every call is a new Dask task, never a cached result of an
        # earlier one (retries must run again).
        dfut = self.client.submit(fn, *args, pure=False)
        wake = threading.Event()
        handle = token.add_callback(lambda _token: wake.set())
        try:
            # Dask runs done-callbacks in its own callback thread: this only wakes us.
            dfut.add_done_callback(lambda _dfut: wake.set())
            # It delivers them from the client's event loop, which a client closed at
            # the wrong moment stops first: look at the future and the client now and
            # then, so that no dispatcher waits for ever.
            while not wake.wait(_CHECK_EVERY):
                if dfut.done() or self._closing():
                    break
            if token.cancelled and not dfut.done():
                # Cancelled here, not in the token's callback: cancelling talks to the
                # scheduler, which must not block whoever cancelled the token.
                if not self._closing():
                    dfut.cancel()
                reason = token.reason
                raise CancelledError() if reason is None else CancelledError(reason)
            if dfut.cancelled() or self._closing():
                # Not by us: the client was closed, or someone cancelled the call on the
                # cluster. (Dask's result() can wait for ever on a closing client.)
                raise CancelledError(f"Dask cancelled the call {dfut.key!r} "
                                     f"(client status: {self.client.status})")
            return dfut.result()
        finally:
            token.remove_callback(handle)
            # Released now, not when garbage: a remote error re-raised here is the very
            # object the client keeps for the key, and its traceback holds Dask's
            # result() frame and so this future -- a cycle the client anchors, which
            # would keep every failed call's key on the cluster. (As Dask's own
            # Future.__del__: a closed event loop raises RuntimeError.)
            with contextlib.suppress(RuntimeError):
                dfut.release()
