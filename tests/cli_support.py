"""Helpers shared by the command-line test modules (tests/ is put on sys.path by conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _env(**extra: str) -> dict[str, str]:
    # FASTPOOL_* switches are inherited: the CLI runs on the same core as the tests.
    return {**os.environ, **extra}


def fastpool_cli(*args: str, cwd: Path, timeout: float = 60.0, stdin: str | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -I -m fastpool ARGS`; a hang fails the test with what it printed."""
    cmd = [sys.executable, "-I", "-m", "fastpool", *args]
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, input=stdin,
                              timeout=timeout, env=env or _env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{cmd} hung for {timeout} s\nstdout: {exc.stdout!r}\nstderr: {exc.stderr!r}")


def _write_jsonl(path: Path, records: list[object]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _read_jsonl(path: Path) -> list[object]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
