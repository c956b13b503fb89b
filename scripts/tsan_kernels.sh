#!/usr/bin/env bash
# ThreadSanitizer on the CPU kernels' thread team: the C++ kernel tests (csrc/cpu/tests,
# no Python) built with -fsanitize=thread and run with teams forced on every size
# (FUSEDRNN_CPU_MIN_WORK=1; test_kernels runs 1-4 threads on FUSEDRNN_CPU_CORES=4 itself),
# once with each way of sharing a sequence (FUSEDRNN_CPU_SPLIT=rows, cols). Without
# torch's OpenMP runtime in the process the kernels run on fusedrnn's own team, whose
# chunk claims, step counters and packing flags are what this checks. Exits non-zero on
# any data race report or test failure; each run's log is build/tsan/<split>.log. The tests
# run with --quick (the tanh sweeps 20x sparser: one thread's arithmetic, which the plain
# build checks densely; under TSan they took a third of each run, 92 -> 63 s on an AVX2 host).
#   bash scripts/tsan_kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/tsan
cmake -S csrc/cpu/tests -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread -O1 -g" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" \
  > /dev/null
cmake --build "$build" -j2 --target test_kernels > /dev/null
status=0
for split in rows cols; do
  # exitcode: TSan's status when it reported anything (the tests' own failures give 1).
  if ! TSAN_OPTIONS="halt_on_error=0 exitcode=66" FUSEDRNN_CPU_MIN_WORK=1 \
    FUSEDRNN_CPU_SPLIT=$split "$build/test_kernels" --quick > "$build/$split.log" 2>&1; then
    status=1
  fi
  races=$(grep -c "WARNING: ThreadSanitizer" "$build/$split.log" || true)
  echo "ThreadSanitizer, split=$split: $races reports; $(tail -n 1 "$build/$split.log")"
  [[ $races == 0 ]] || status=1
done
exit $status
