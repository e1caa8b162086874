#!/usr/bin/env bash
# Build fastpool._core with a sanitizer in a scratch copy + venv and run a short stress.
#
#   tools/sanitize.sh thread|address [--scale X] [--keep]
#
#   thread   ThreadSanitizer   (FASTPOOL_SANITIZE=thread)
#   address  AddressSanitizer + UndefinedBehaviorSanitizer (FASTPOOL_SANITIZE=address)
#
# Nothing in the source tree is touched: the tree is copied to $FP_SANITIZE_DIR (default
# ${TMPDIR:-/tmp}/fastpool-sanitize-<kind>), built there into its own venv (created with
# $PYTHON, default python3; Cython and setuptools come from the package index), and
# tools/sanitize_stress.py runs against that build with the sanitizer runtime preloaded
# (CPython itself is not instrumented, so the runtime must be loaded before it starts).
#
# Reports are classified: a report with a frame in our code (_core.cpython-*.so built
# from src/_core.pyx and src/core/*.pxi, src/fp_queue.h) counts; a report entirely
# inside the interpreter is CPython's, is listed but does not fail the run (see tools/tsan.supp and
# docs/hardening.md for what is suppressed and why). FP_SANITIZE_TIMEOUT (default 600 s):
# a stress still running then dumps every stack and fails. Exit status: 0 when the stress
# passed and no report involves our code; 1 otherwise. Logs stay in $FP_SANITIZE_DIR/logs.
set -euo pipefail

kind="${1:-}"
case "$kind" in
  thread|address) shift ;;
  *) echo "usage: $0 thread|address [--scale X] [--keep]" >&2; exit 2 ;;
esac
scale=0.5
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --keep) shift ;;  # accepted for symmetry: the scratch dir is always kept for its logs
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
python="${PYTHON:-python3}"
cxx="${CXX:-g++}"
work="${FP_SANITIZE_DIR:-${TMPDIR:-/tmp}/fastpool-sanitize-$kind}"
tree="$work/tree"
venv="$work/venv"
logs="$work/logs"
mkdir -p "$work"
rm -rf "$logs"
mkdir -p "$logs"

echo "== copy $root -> $tree"
# tar, not rsync: a fresh machine may not have rsync.
rm -rf "$tree"
mkdir -p "$tree"
(cd "$root" && tar -cf - --exclude ./build --exclude '*.so' --exclude ./.git \
  --exclude '*.egg-info' --exclude __pycache__ --exclude ./src/_core.cpp .) | tar -xf - -C "$tree"

if [ ! -x "$venv/bin/python" ]; then
  echo "== venv $venv ($python)"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q "Cython>=3.1,<4" "setuptools>=77" wheel
fi

echo "== build FASTPOOL_SANITIZE=$kind"
( cd "$tree" && FASTPOOL_SANITIZE="$kind" CC="${CC:-gcc}" CXX="$cxx" \
    "$venv/bin/pip" install -q --no-build-isolation --force-reinstall --no-deps . ) \
  >"$logs/build.log" 2>&1 || { tail -40 "$logs/build.log"; exit 1; }

case "$kind" in
  thread)
    runtime="$("$cxx" -print-file-name=libtsan.so)"
    export TSAN_OPTIONS="suppressions=$here/tsan.supp halt_on_error=0 exitcode=0 \
die_after_fork=0 report_signal_unsafe=0 second_deadlock_stack=1 history_size=4 \
log_path=$logs/tsan ${TSAN_OPTIONS:-}"
    ;;
  address)
    runtime="$("$cxx" -print-file-name=libasan.so)"
    # CPython frees everything through its allocator; PYTHONMALLOC=malloc sends it all to
    # malloc so ASan sees every object. Leaks are checked at exit, then filtered to ours
    # (the interpreter deliberately leaks at shutdown). UBSan prints to the same log.
    export PYTHONMALLOC=malloc
    export ASAN_OPTIONS="detect_leaks=1 halt_on_error=0 abort_on_error=0 exitcode=0 \
detect_stack_use_after_return=0 log_path=$logs/asan ${ASAN_OPTIONS:-}"
    export UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=0 log_path=$logs/ubsan ${UBSAN_OPTIONS:-}"
    ;;
esac
if [ ! -f "$runtime" ]; then
  echo "sanitizer runtime not found ($runtime): install the compiler's sanitizer libraries" >&2
  exit 1
fi

echo "== stress (scale $scale) with LD_PRELOAD=$runtime"
rc=0
# Not -I: it implies -E, which would drop PYTHONMALLOC. -P -s: no script dir, no user site.
( cd "$work" && LD_PRELOAD="$runtime" "$venv/bin/python" -P -s \
    "$tree/tools/sanitize_stress.py" --scale "$scale" --timeout "${FP_SANITIZE_TIMEOUT:-600}" ) >"$logs/stress.out" 2>"$logs/stress.err" || rc=$?
cat "$logs/stress.out"
if [ $rc -ne 0 ] || ! grep -q "^TOTAL" "$logs/stress.out"; then
  echo "== stress FAILED (exit $rc)"; tail -40 "$logs/stress.err"; exit 1
fi

# Classify the reports: each log file holds reports separated by ===== lines (TSan) or
# "==PID==ERROR"/"Direct leak" blocks (ASan/LSan) / "runtime error:" lines (UBSan).
"$venv/bin/python" - "$logs" "$kind" <<'PY'
import glob, os, re, sys
logs, kind = sys.argv[1], sys.argv[2]
ours = re.compile(r"_core\.cpython|fp_queue\.h|_core\.pyx|core/\w+\.pxi|_core\.cpp|fp::|__pyx_")
text = ""
for path in sorted(glob.glob(os.path.join(logs, "tsan*")) + glob.glob(os.path.join(logs, "asan*"))
                   + glob.glob(os.path.join(logs, "ubsan*"))):
    with open(path, errors="replace") as f:
        text += f.read() + "\n"
if kind == "thread":
    reports = re.findall(r"WARNING: ThreadSanitizer:.*?(?=\n==================|\Z)", text, re.S)
else:
    reports = re.findall(r"(?:ERROR: AddressSanitizer|Direct leak of|Indirect leak of).*?(?=\n\n)",
                         text, re.S)
    reports += re.findall(r"runtime error:.*?(?=\n\n|\Z)", text, re.S)
mine = [r for r in reports if ours.search(r)]
theirs = len(reports) - len(mine)
kinds = {}
for r in reports:
    k = r.splitlines()[0][:90]
    kinds[k] = kinds.get(k, 0) + 1
print(f"== {kind} sanitizer: {len(reports)} reports, {len(mine)} involving fastpool, "
      f"{theirs} in the interpreter only")
for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:10]:
    print(f"   {n:5d}  {k}")
for r in mine[:5]:
    print("\n--- report involving fastpool ---\n" + r[:4000])
sys.exit(1 if mine else 0)
PY
