#!/usr/bin/env bash
# Build and run the C++ tests of src/fp_queue.h (tests/core/native/test_ring.cpp) alone.
#
#   tests/core/native/run.sh [plain] [tsan] [asan] [-- TEST...]   (default: plain tsan)
#
# plain  g++ -O1 -g                          (all tests at FP_TEST_SCALE, default 1)
# tsan   -fsanitize=thread                   (scale 0.3 unless FP_TEST_SCALE is set)
# asan   -fsanitize=address,undefined        (scale 0.3 unless FP_TEST_SCALE is set)
# Names after `--` run only those tests (see main() in test_ring.cpp).
#
# Environment: CXX (default g++, clang++ works), FP_NATIVE_BUILD_DIR (default a temp dir),
# FP_TEST_SCALE. Exit status: 0 when every requested variant passed with no sanitizer report.
#
# Notes: TSan does not model std::atomic_thread_fence (GCC says so with -Wtsan, silenced
# here). The queue's fences only order the "is anyone waiting?" handshake for wake-ups,
# never data hand-off (that is the ring's release/acquire on seq, and the mutex), so TSan
# still checks every data access; the wake-up protocol is checked by the tests themselves
# (a lost wake-up shows as a timeout). die_after_fork=0: the fork test forks a
# multithreaded process on purpose.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cxx="${CXX:-g++}"
out="${FP_NATIVE_BUILD_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fp-native.XXXXXX")}"
mkdir -p "$out"

variants=()
tests=()
while [ $# -gt 0 ]; do
  case "$1" in
    plain|tsan|asan) variants+=("$1") ;;
    --) shift; tests=("$@"); break ;;
    *) echo "usage: $0 [plain] [tsan] [asan] [-- TEST...]" >&2; exit 2 ;;
  esac
  shift
done
[ ${#variants[@]} -gt 0 ] || variants=(plain tsan)

common=(-std=c++17 -O1 -g -pthread -Wall -Wextra -I"$root/src" "$here/test_ring.cpp")

run_variant() {
  local v="$1" bin="$out/test_ring_$1" flags=() scale="${FP_TEST_SCALE:-0.3}" log="$out/$1.log"
  case "$v" in
    plain) scale="${FP_TEST_SCALE:-1}" ;;
    tsan) flags=(-fsanitize=thread -Wno-tsan) ;;
    asan) flags=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all) ;;
  esac
  echo "== $v: $cxx ${flags[*]:-} (scale $scale)"
  "$cxx" "${common[@]}" "${flags[@]}" -o "$bin"
  local rc=0
  FP_TEST_SCALE="$scale" \
  TSAN_OPTIONS="halt_on_error=1 die_after_fork=0 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
  ASAN_OPTIONS="detect_leaks=1 abort_on_error=0 ${ASAN_OPTIONS:-}" \
  UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1 ${UBSAN_OPTIONS:-}" \
    "$bin" "${tests[@]}" >"$log" 2>&1 || rc=$?
  # TSan fails to start on kernels with high mmap ASLR entropy: retry without ASLR.
  if [ $rc -ne 0 ] && grep -q "unexpected memory mapping" "$log" && command -v setarch >/dev/null; then
    FP_TEST_SCALE="$scale" TSAN_OPTIONS="halt_on_error=1 die_after_fork=0 ${TSAN_OPTIONS:-}" \
      setarch "$(uname -m)" -R "$bin" "${tests[@]}" >"$log" 2>&1 && rc=0 || rc=$?
  fi
  cat "$log"
  if [ $rc -ne 0 ] || grep -qE "WARNING: ThreadSanitizer|ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer" "$log"; then
    echo "== $v: FAILED (exit $rc)"
    return 1
  fi
  echo "== $v: passed"
}

failed=0
for v in "${variants[@]}"; do
  run_variant "$v" || failed=1
done
exit $failed
