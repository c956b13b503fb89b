#!/usr/bin/env bash
# The CPU kernels on aarch64 (their NEON table), from an x86-64 machine: cross-compile the
# standalone C++ kernel tests (csrc/cpu/tests, no Python, no torch) with warnings as
# errors and run them under qemu-user. Needs g++-aarch64-linux-gnu and qemu-user
# (Debian/Ubuntu: apt-get install g++-aarch64-linux-gnu qemu-user).
#   bash scripts/test_aarch64.sh [--full]     # --full: the dense tanh sweep (~2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=--quick
[[ "${1:-}" == "--full" ]] && quick=
for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" > /dev/null || { echo "test_aarch64: $tool not found" >&2; exit 2; }
done
build=build/aarch64-tests
cmake -S csrc/cpu/tests -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_SYSTEM_NAME=Linux \
  -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
  -DCMAKE_CXX_FLAGS=-Werror > /dev/null
cmake --build "$build" -j2 --target test_kernels > /dev/null
# shellcheck disable=SC2086
qemu-aarch64 -L /usr/aarch64-linux-gnu "$build/test_kernels" $quick
