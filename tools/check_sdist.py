"""Check an sdist's file list: all that building and testing need, and nothing else.

    python tools/check_sdist.py dist/fastpool-X.Y.Z.tar.gz

The expected list is explicit: the fixed files below, plus every file git tracks in the
directories that grow with the project (a new module or test must ship without anyone
editing this file). The sdist must hold exactly that list: a missing file fails (a build
or test that works here but not from the sdist), and so does any other file (generated
C++ such as src/_core.cpp, which would tie every future CPython to one Cython's output; a
compiled .so; a stray scratch file). Run by tools/release_check.sh and wheels.yml.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Fixed files: the build (setup.py + pyproject.toml + the native sources) and metadata...
FIXED = {
    "LICENSE", "MANIFEST.in", "README.md", "pyproject.toml", "setup.py",
    "src/_core.pyx", "src/fp_queue.h", "src/fp_queue.pxd",
    "fastpool/_core.pyi", "fastpool/py.typed",
    "tests/core/native/run.sh", "tests/core/native/test_ring.cpp",
}
# ...and what setuptools writes into every sdist.
GENERATED = {
    "PKG-INFO", "setup.cfg",
    "fastpool.egg-info/PKG-INFO", "fastpool.egg-info/SOURCES.txt",
    "fastpool.egg-info/dependency_links.txt", "fastpool.egg-info/entry_points.txt",
    "fastpool.egg-info/requires.txt", "fastpool.egg-info/top_level.txt",
}

# Growing directories: every tracked file matching the pattern ships (not recursive).
GROWING = {
    "fastpool": ["*.py"],
    "fastpool/_py": ["*.py"],
    "fastpool/pool": ["*.py"],
    "src/core": ["*.pxi"],
    "tests": ["*.py"],
    **{f"tests/{layer}": ["*.py"] for layer in
       ("core", "executor", "pool", "process", "cli", "package", "package/isolated")},
    "benches": ["*.py", "*.md"],
    "docs": ["*.md"],
}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    return out.splitlines()


def expected_files(tracked: list[str]) -> set[str]:
    expected = FIXED | GENERATED
    for path in tracked:
        folder, _, name = path.rpartition("/")
        if any(fnmatch.fnmatch(name, pat) for pat in GROWING.get(folder, ())):
            expected.add(path)
    return expected


def sdist_files(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as tar:
        # Every member sits under fastpool-X.Y.Z/; directories carry no content.
        return {m.name.split("/", 1)[1] for m in tar.getmembers()
                if not m.isdir() and "/" in m.name}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    tracked = tracked_files()
    expected = expected_files(tracked)
    missing_in_repo = sorted(FIXED - set(tracked))
    if missing_in_repo:  # this list is stale: say so rather than blame the sdist
        print(f"tools/check_sdist.py names files git does not track: {missing_in_repo}",
              file=sys.stderr)
        return 1
    actual = sdist_files(Path(argv[0]))
    missing, stray = sorted(expected - actual), sorted(actual - expected)
    for name in missing:
        print(f"missing from the sdist: {name}", file=sys.stderr)
    for name in stray:
        print(f"not expected in the sdist: {name}", file=sys.stderr)
    if missing or stray:
        print("Fix MANIFEST.in (or, for a new kind of file, the lists in "
              "tools/check_sdist.py).", file=sys.stderr)
        return 1
    print(f"sdist contents OK: {len(actual)} files, as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
