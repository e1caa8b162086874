"""`fastpool run`'s output files: unbuffered, durable on sync(), never a torn record."""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["Sink", "fsync_dir", "write_all"]


def write_all(f: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        view = view[n:]


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:  # not possible everywhere (Windows): best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Sink:
    """An unbuffered binary output file, opened on first write when `lazy` (so no empty
    dead-letter file is left behind). `size` is what is written; `count` the lines."""

    def __init__(self, path: str, lazy: bool, append_at: int | None = None,
                 stdout: bool = False) -> None:
        self.path = path
        self.count = 0
        self.size = 0
        self._f: Any = None
        self._created = False  # its directory entry is not fsync'd yet
        if stdout:
            sys.stdout.flush()  # anything printed before goes first
            self._f = open(sys.stdout.fileno(), "wb", buffering=0, closefd=False)
            self.path = "<stdout>"
        elif append_at is not None:
            self._open(append_at)
        elif not lazy:
            self._create()

    def _create(self) -> None:
        self._f = open(self.path, "wb", buffering=0)
        self._created = True

    def _open(self, at: int) -> None:
        if at == 0:
            self._create()
        else:
            self._f = open(self.path, "r+b", buffering=0)
            if os.fstat(self._f.fileno()).st_size < at:  # truncate() would pad with zeros
                self._f.close()
                raise ValueError(f"cannot resume: {self.path!r} is shorter than at its "
                                 "last checkpoint (was it changed?)")
            self._f.truncate(at)
            self._f.seek(at)
        self.size = at

    def write(self, data: bytes, lines: int) -> None:
        if not data:
            return
        if self._f is None:
            self._create()
        try:
            write_all(self._f, data)
        except BaseException:
            self._undo()
            raise
        self.size += len(data)
        self.count += lines

    def _undo(self) -> None:
        # A write that failed half-way: cut the file back, so no torn record stays.
        try:
            if self._f.seekable():
                self._f.truncate(self.size)
                self._f.seek(self.size)
        except OSError:
            pass

    def sync(self) -> None:
        if self._f is not None and self._f.seekable():
            os.fsync(self._f.fileno())
            if self._created:  # a new file survives a power loss once its entry does
                fsync_dir(self.path)
                self._created = False

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
