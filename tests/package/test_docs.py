"""The README's Pool examples are runnable as written (each in a fresh interpreter)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def pool_examples():
    text = README.read_text(encoding="utf-8")
    start = text.index("## The production `Pool`")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_readme_has_pool_examples():
    assert len(pool_examples()) >= 5


@pytest.mark.parametrize("index", range(len(pool_examples())))
def test_readme_pool_example_runs(index, tmp_path):
    code = pool_examples()[index]
    if "dask" in code:
        pytest.importorskip("distributed", reason="the Dask example needs the dask extra")
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
