#!/usr/bin/env bash
# Build the CPU extension with AddressSanitizer + UndefinedBehaviorSanitizer and run the
# kernel-facing tests against it.
#
#   bash scripts/sanitize.sh                 # kernels, ops, module and fuzz tests
#   bash scripts/sanitize.sh tests/test_kernels.py -k long   # any pytest arguments
#
# Needs: cmake, a C++ compiler with libasan/libubsan (gcc), and an environment where
# torch, numpy, pybind11 and pytest are importable. The result is written to
# build/sanitize/last-run.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/sanitize
stage=$build/stage

cmake -S . -B "$build" -DFUSEDRNN_SANITIZE=ON -DFUSEDRNN_CUDA=OFF -DFUSEDRNN_WERROR=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$build" -j2 --target _C

# Stage a package with the sanitized extension, ahead of any installed fusedrnn.
rm -rf "$stage" && mkdir -p "$stage/fusedrnn"
cp python/fusedrnn/*.py "$stage/fusedrnn/"
cp "$build"/_C*.so "$stage/fusedrnn/"

# ASan must be loaded first; libstdc++ right after it, so that ASan's __cxa_throw
# interceptor finds the real one (torch throws C++ exceptions through its autograd engine).
export LD_PRELOAD="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libstdc++.so)"
# Python and torch allocate for the life of the process: leak checks would only see them.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_init_order=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH=$PWD/$stage${PYTHONPATH:+:$PYTHONPATH}

if [ $# -eq 0 ]; then
  set -- tests/test_kernels.py tests/test_ops.py tests/test_dropin.py tests/test_reliability.py \
    tests/test_cpu_kernels.py tests/test_func.py tests/test_gradcheck.py \
    tests/test_fuzz.py
fi
# An editable install puts an import hook ahead of PYTHONPATH: a sitecustomize in the
# stage drops it in this process and in every child (DDP tests spawn processes).
cat > "$stage/sitecustomize.py" <<'PY'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
PY
python - "$stage" <<'PY'
import pathlib, sys
import fusedrnn._C
stage = pathlib.Path(sys.argv[1]).resolve()
where = pathlib.Path(fusedrnn._C.__file__).resolve()
assert where.is_relative_to(stage), f"not the sanitized build: {where}"
print("sanitized extension:", where, flush=True)
PY
python -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$build/last-run.txt"
exit "${PIPESTATUS[0]}"
