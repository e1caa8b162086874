"""The release pipeline (issue 13): audited workflows, one version, the supported Pythons.

The .github/ checks need a source checkout; tests copied out of the sdist (cibuildwheel,
tools/release_check.sh) skip them and keep the version and CLI checks, which then test
the installed wheel. zizmor and check-jsonschema come with the test extra: a checkout
without them skips those two tests locally, and fails them in CI.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

import fastpool

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))
PYPROJECT = ROOT / "pyproject.toml"

needs_checkout = pytest.mark.skipif(
    not (GITHUB / "workflows").is_dir() or not (ROOT / ".git").exists(),
    reason="not a source checkout (tests copied out of the sdist)")


def _tool(name: str, since: tuple[int, int] = (3, 10)) -> str:
    """The console script `name` of this interpreter's environment, else on PATH
    (`since`: the first Python the test extra installs it on)."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        for candidate in (name, name + ".exe"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (pip install '.[test]')"
    if os.environ.get("CI") and sys.version_info[:2] >= since:
        pytest.fail(message + ": CI must run the .github/ audit")
    pytest.skip(message)


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


# -- .github/ ---------------------------------------------------------------------------


@needs_checkout
def test_zizmor_finds_nothing_above_informational() -> None:
    # --offline: no GitHub API (no network here); the audits that need it are online-only
    # (known-vulnerable-actions, impostor commits). Informational findings are allowed.
    proc = _run([_tool("zizmor", since=(3, 11)), "--offline", "--min-severity", "low", str(GITHUB)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ["dependabot.yml"] + [p.name for p in WORKFLOWS]:
        assert name in proc.stderr, f"zizmor did not audit {name}:\n{proc.stderr}"


@needs_checkout
@pytest.mark.parametrize("schema, files", [
    ("vendor.github-workflows", [str(p) for p in WORKFLOWS]),
    ("vendor.dependabot", [str(GITHUB / "dependabot.yml")]),
])
def test_github_files_match_their_schema(schema: str, files: list[str]) -> None:
    assert files
    proc = _run([_tool("check-jsonschema", since=(3, 11)), "--builtin-schema", schema, *files])
    assert proc.returncode == 0, proc.stdout + proc.stderr


USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$")
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"^\s+# v\d+\.\d+\.\d+$")


@needs_checkout
def test_every_action_is_pinned_to_a_commit_with_its_version() -> None:
    # zizmor requires a SHA; the "# vX.Y.Z" comment is what tells a reader (and
    # Dependabot, which rewrites both) which release that SHA is.
    uses = []
    for path in WORKFLOWS:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = USES.match(line)
            if m:
                uses.append((f"{path.name}:{n}", m.group(1), m.group(2)))
    assert len(uses) >= 10
    bad = [u for u in uses if not (PINNED.match(u[1]) and VERSION_COMMENT.match(u[2]))]
    assert not bad, "not `uses: owner/repo@<40-hex sha> # vX.Y.Z`:\n" + "\n".join(map(str, bad))


# -- the sdist check --------------------------------------------------------------------


def _load_check_sdist() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_sdist", ROOT / "tools" / "check_sdist.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_checkout
def test_check_sdist_wants_exactly_the_expected_files(tmp_path: Path) -> None:
    check = _load_check_sdist()
    expected = check.expected_files(check.tracked_files())
    assert {"src/_core.pyx", "src/fp_queue.h", "fastpool/__init__.py",
            "tests/conftest.py"} <= expected
    assert not any(n.endswith((".cpp", ".so")) for n in expected - {"tests/core/native/test_ring.cpp"})

    def sdist(names: set[str]) -> str:
        path = tmp_path / "fastpool-0.0.0.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name in sorted(names):
                info = tarfile.TarInfo(f"fastpool-0.0.0/{name}")
                tar.addfile(info, io.BytesIO(b""))
        return str(path)

    assert check.main([sdist(expected)]) == 0
    # Generated C++ (or anything else unlisted) and a missing source both fail.
    assert check.main([sdist(expected | {"src/_core.cpp"})]) == 1
    assert check.main([sdist(expected - {"src/fp_queue.h"})]) == 1


# -- version ----------------------------------------------------------------------------


@pytest.mark.skipif(not PYPROJECT.is_file(), reason="no pyproject.toml next to the tests")
def test_the_version_is_written_once() -> None:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert "version" not in config["project"]
    assert "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastpool.__version__"}
    # ...and what was installed (wheel, sdist build or editable) carries that version.
    assert importlib.metadata.version("fastpool") == fastpool.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", fastpool.__version__)


def test_cli_version_names_the_version_and_the_core(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-I", "-m", "fastpool", "--version"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())  # argparse may wrap the line
    assert out.startswith(f"fastpool {fastpool.__version__} (")
    if fastpool.NATIVE:
        assert "native core" in out
    else:
        assert "pure-Python core" in out
        if os.environ.get("FASTPOOL_NO_EXTENSIONS"):
            assert "FASTPOOL_NO_EXTENSIONS" in out  # forced, not a missing build


def test_cli_version_says_why_the_fallback_is_used(tmp_path: Path) -> None:
    env = {**os.environ, "FASTPOOL_NO_EXTENSIONS": "1"}
    proc = subprocess.run([sys.executable, "-I", "-m", "fastpool", "--version"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert out.startswith(f"fastpool {fastpool.__version__} (pure-Python core: "
                          "FASTPOOL_NO_EXTENSIONS;"), out


# -- supported Pythons ------------------------------------------------------------------


@needs_checkout
def test_supported_pythons_agree_everywhere() -> None:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    classifiers = {c.rsplit(" :: ", 1)[1] for c in config["project"]["classifiers"]
                   if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    build = config["tool"]["cibuildwheel"]["build"].split()
    wheels = {f"3.{b[3:].split('-')[0].rstrip('t')}" for b in build}
    free_threaded = {f"3.{b[3:].split('-')[0].rstrip('t')}" for b in build if "t-" in b}
    assert classifiers == wheels, (classifiers, wheels)
    assert config["project"]["requires-python"] == f">={min(wheels, key=lambda v: int(v[2:]))}"
    assert {"3.14", "3.15"} <= free_threaded  # the free-threaded builds with default support
    ci = (GITHUB / "workflows" / "ci.yml").read_text(encoding="utf-8")
    matrix = re.search(r'python: \[([^\]]*)\]', ci)
    assert matrix is not None
    tested = {v.strip(' "') for v in matrix.group(1).split(",")}
    assert {v for v in tested if not v.endswith("t")} == wheels
    assert {v[:-1] for v in tested if v.endswith("t")} == free_threaded
    # The README's table names each of them, the free-threaded builds too.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| (3\.\d+t?) +\|", readme, flags=re.M))
    assert rows == wheels | {v + "t" for v in free_threaded}, rows
