"""`fastpool run --progress`: the progress line (or tqdm bar) on stderr."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

__all__ = ["Progress"]


class Progress:
    """tqdm when installed and stderr is a terminal; else one `\\r` line fitted to the
    terminal and cleared at the end; with stderr not a terminal (and --progress) a
    plain line every few seconds and at the end."""

    def __init__(self, total_bytes: int | None, start_bytes: int) -> None:
        self.tty = sys.stderr.isatty()
        self._total = total_bytes
        self._start_bytes = start_bytes
        self._started = self._last = time.monotonic()
        self._bar: Any = None
        self._shown = 0
        if self.tty:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                try:  # a terminal that reports no size (0 columns): tqdm shows nothing
                    sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
                except OSError:
                    sized = False
                self._bar = tqdm(total=total_bytes, initial=start_bytes, unit="B",
                                 unit_scale=True, unit_divisor=1024, file=sys.stderr,
                                 desc="fastpool run", leave=False, dynamic_ncols=sized,
                                 ncols=None if sized else shutil.get_terminal_size().columns)

    def update(self, offset: int, ok: int, failed: int, pending: int,
               final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (0.2 if self.tty else 2.0):
            return
        self._last = now
        if self._bar is not None:
            self._bar.update(offset - self._bar.n)
            self._bar.set_postfix_str(f"{ok} ok, {failed} failed", refresh=False)
            return
        took = max(now - self._started, 1e-9)
        text = "fastpool run: "  # what matters most first: a narrow terminal cuts the end
        if self._total:
            speed = (offset - self._start_bytes) / took
            text += f"{min(1.0, offset / self._total):.0%}, "
            if speed > 0 and not final:
                text += f"ETA {_clock((self._total - offset) / speed)}, "
        text += (f"{ok} ok, {failed} failed, {pending} in flight, "
                 f"{(ok + failed) / took:.0f} rec/s")
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            text = text[:width]
            pad = max(0, self._shown - len(text))
            self._shown = len(text)
            sys.stderr.write("\r" + text + " " * pad)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.tty and self._shown:
            sys.stderr.write("\r" + " " * self._shown + "\r")  # leave a clean line
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return (f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
            if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}")
