"""Exceptions raised by fastpool.Pool."""

from __future__ import annotations

import queue

__all__ = ["QueueFull", "DeadlineExceeded"]


class QueueFull(queue.Full):
    """The pool's queue stayed full for the whole `timeout` of a schedule() call."""


class DeadlineExceeded(TimeoutError):
    """A task ran past the `deadline` it was scheduled with; its token was cancelled."""
