"""`fastpool run --resume`: the journal of checkpoints kept beside OUT."""

from __future__ import annotations

import json
import os
from typing import Any

from ._run_output import fsync_dir, write_all

__all__ = ["Journal", "input_identity"]


class Journal:
    """`OUT.journal`: what `--resume` needs, written beside a regular OUT.

    A JSON header line (the input file's identity and the command's record-shaping
    options), then one JSON line per checkpoint: the input offset and line number up to
    which every record is written, and the sizes of OUT and the dead-letter file at that
    moment, plus the counters. The last line says `"done": true` when the run ended.

    A checkpoint is appended only after OUT and the dead-letter file are fsync'd, and is
    fsync'd itself (once a second, and at the end): whatever happens after it (SIGKILL,
    power loss) the files hold at least what it records. `--resume` cuts them back to
    its sizes (removing a torn last line and anything written past it), seeks the input
    to its offset and carries on, so the files end byte for byte as an uninterrupted
    run's. A torn last journal line is ignored (it does not parse).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: Any = None

    @staticmethod
    def read(path: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None, int]:
        """(header, last checkpoint, bytes of valid lines); missing parts are None."""
        with open(path, "rb") as f:
            data = f.read()
        header = last = None
        good = 0
        for raw in data.split(b"\n")[:-1]:  # the part after the last newline is torn
            try:
                entry = json.loads(raw)
            except ValueError:
                break
            if not isinstance(entry, dict):
                break
            if header is None:
                header = entry
            else:
                last = entry
            good += len(raw) + 1
        return header, last, good

    def start(self, header: dict[str, Any], keep: int | None) -> None:
        if keep is None:
            self._f = open(self.path, "wb", buffering=0)
            self.append(header)
            fsync_dir(self.path)
        else:
            self._f = open(self.path, "r+b", buffering=0)
            self._f.truncate(keep)
            self._f.seek(keep)

    def append(self, entry: dict[str, Any]) -> None:
        write_all(self._f, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def input_identity(fd: int) -> dict[str, int]:
    st = os.fstat(fd)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
