"""`fastpool run`'s input: lines from a file or a pipe, in batches, never losing one."""

from __future__ import annotations

import bisect
import itertools
import os
import select
import stat
import sys
import threading
import time
from typing import IO, Callable, Iterator, Union

__all__ = ["Line", "LineReader", "LongLine", "Stop", "line_size"]

_CHUNK = 1 << 20               # bytes per read() of the input
_MAX_BATCH_BYTES = 1 << 20     # input bytes per batch at most (past one line)
_DEAD_PREFIX = 200             # bytes of an over-long line kept in its dead letter


class LongLine(bytes):
    """The first bytes of a line over --max-line-bytes (the rest was never kept)."""

    size: int = 0


def long_line(prefix: bytes | bytearray, size: int) -> LongLine:
    line = LongLine(prefix)
    line.size = size
    return line


def line_size(line: Line) -> int:
    """The input bytes of a line followed by a newline (every line but perhaps the last)."""
    return line.size if type(line) is LongLine else len(line) + 1


# An input line, without its newline: a bytearray when it came in several reads (grown in
# place, so a huge line is never copied to be joined), else bytes.
Line = Union[bytes, bytearray]


class Stop(Exception):
    """The reader was interrupted while waiting for input."""


class LineReader:
    """Reads lines from a binary file descriptor without ever losing one to a signal.

    Lines are handed out without their newline. Each read is split into lines in C
    (bytes.split); a line spread over many reads grows in place in one bytearray, so
    reading is linear in the input whatever the line lengths. On a pipe or terminal it
    waits with select() in short steps, so an interruption or finished results are
    handled while no input arrives. `offset` is the input offset past the last line
    handed out, `lines` their count.
    """

    def __init__(self, f: IO[bytes], max_line_bytes: int | None = None,
                 offset: int = 0, lines: int = 0) -> None:
        self._fd = f.fileno()
        mode = os.fstat(self._fd).st_mode
        self.regular = stat.S_ISREG(mode)
        self._pollable = not self.regular and sys.platform != "win32"
        if offset:
            os.lseek(self._fd, offset, os.SEEK_SET)
        self.offset = offset
        self.lines = lines
        self.torn = False
        self._max = max_line_bytes
        self._lines: list[Line] = []  # whole lines of the last read ...
        self._next = 0                # ... of which _lines[_next:] are not handed out
        # The start of a line not complete yet, grown in place (handed out as the line
        # itself: no joining copy), or only its first bytes once it is over
        # max_line_bytes; _part_len counts all of it.
        self._part = bytearray()
        self._part_len = 0
        self._eof = False

    def _read(self, stop: threading.Event, idle: Callable[[], None]) -> bytes:
        if self._pollable:
            while not select.select([self._fd], [], [], 0.1)[0]:
                if stop.is_set():
                    raise Stop
                idle()
        if stop.is_set():
            raise Stop
        return os.read(self._fd, _CHUNK)

    def _take(self, piece: bytes) -> None:
        """Keep `piece`, the start (or more) of an unfinished line."""
        self._part_len += len(piece)
        if self._max is not None and self._part_len > self._max:
            # Over the limit: keep a prefix for the dead letter, drop the rest as it comes.
            if len(self._part) != _DEAD_PREFIX:
                self._part = (self._part + piece)[:_DEAD_PREFIX]
            return
        self._part += piece

    def _complete(self, tail: bytes, newline: int) -> Line:
        """The line made of the kept start and `tail`."""
        size = self._part_len + len(tail) + newline
        part, self._part, self._part_len = self._part, bytearray(), 0
        if self._max is not None and size > self._max:
            return long_line((part + tail)[:_DEAD_PREFIX], size)
        part += tail
        return part

    def _add(self, data: bytes) -> None:
        """Split a read into whole lines and the start of the next one."""
        first: Line | None = None
        if self._part_len:
            nl = data.find(b"\n")
            if nl < 0:
                self._take(data)
                return
            first = self._complete(data[:nl], 1)
            data = data[nl + 1:]
        split = data.split(b"\n")
        tail = split.pop()
        pieces: list[Line] = [] if first is None else [first]
        pieces += split
        limit = self._max
        if limit is not None and pieces and max(map(len, pieces)) >= limit:
            pieces = [long_line(p[:_DEAD_PREFIX], len(p) + 1)
                      if len(p) >= limit and type(p) is not LongLine else p for p in pieces]
        self._lines, self._next = pieces, 0
        if tail:
            self._take(tail)

    def read_batch(self, max_lines: int, stop: threading.Event,
                   idle: Callable[[], None]) -> list[Line] | None:
        """Up to `max_lines` whole lines (`offset` moves past them); None at end of input.

        Returns what one read brought rather than wait to fill the batch. Raises Stop
        when `stop` is set while waiting for input.
        """
        while self._next >= len(self._lines):
            if self._eof:
                if not self._part_len:
                    return None
                line = self._complete(b"", 0)  # the last line, without newline
                self.lines += 1
                self.offset += line.size if type(line) is LongLine else len(line)
                return [line]
            data = self._read(stop, idle)
            if data:
                self._add(data)
            else:
                self._eof = True
        start = self._next
        batch = self._lines[start:start + max_lines]
        # Summed in C: no per-line Python work on the way of a fast FUNC.
        nbytes = (sum(map(len, batch)) + len(batch) if self._max is None
                  else sum(map(line_size, batch)))
        if nbytes > _MAX_BATCH_BYTES and len(batch) > 1:
            ends = list(itertools.accumulate(map(line_size, batch)))
            keep = max(1, bisect.bisect_right(ends, _MAX_BATCH_BYTES))
            del batch[keep:]
            nbytes = ends[keep - 1]
        self._next = start + len(batch)
        self.lines += len(batch)
        self.offset += nbytes
        return batch

    def rest(self, deadline: float, abort: threading.Event) -> Iterator[bytes]:
        """What is left of the input, to save, in pieces.

        From a regular file, everything from the first line not handed out (re-read).
        From a pipe, the buffered lines, then the rest of a line begun (read a byte at
        a time, so not a byte past its newline is taken from the pipe) until `deadline`
        or `abort`; afterwards `torn` is True when a line is left unfinished (or was
        over --max-line-bytes: only its start was kept).
        """
        if self.regular:
            os.lseek(self._fd, self.offset, os.SEEK_SET)
            while data := os.read(self._fd, _CHUNK):
                yield data
            return
        rest = self._lines[self._next:]
        cut = (self._max is not None and self._part_len > self._max) or any(
            type(line) is LongLine for line in rest)
        head = b"".join(bytes(line) + b"\n" for line in rest) + bytes(self._part)
        self._lines, self._next, self._part, self._part_len = [], 0, bytearray(), 0
        yield head
        if cut:
            self.torn = True
            return
        if self._eof or not head or head.endswith(b"\n"):
            return
        while time.monotonic() < deadline and not abort.is_set():
            if self._pollable and not select.select([self._fd], [], [], 0.1)[0]:
                continue
            byte = os.read(self._fd, 1)
            if not byte:
                return  # end of input: a last line without newline
            yield byte
            if byte == b"\n":
                return
        self.torn = True
