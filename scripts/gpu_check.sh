#!/usr/bin/env bash
# One call on a lent GPU machine: build fusedrnn with its CUDA kernels, stress the persistent
# kernel (scripts/cuda_stress.py), run the CUDA tests,
# compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on a small case, and the GPU
# benchmarks. Everything goes to $OUT (default ./out): gpu_check.log, pytest_cuda.xml,
# sanitizer logs, bench_cuda.{json,md}, bench_paths.{json,md}. Pass --full for the issue's
# full benchmark grid. It starts by printing the driver, nvcc and torch CUDA versions.
#
#   OUT=/some/dir scripts/gpu_check.sh [--full]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
status=0
step() { echo; echo "== $*"; }

step "CUDA versions: driver (nvidia-smi), toolkit (nvcc), torch"
# _C_cuda links the CUDA runtime of the nvcc that builds it statically: the driver must
# support that CUDA major version, or every kernel call fails (cudaErrorInsufficientDriver).
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
driver_cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -1)
nvcc_cuda=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p' | head -1)
torch_cuda=$($PY -c "import torch; print(torch.version.cuda)" 2>/dev/null)
echo "driver:  ${driver:-?} (supports CUDA up to ${driver_cuda:-?})"
echo "nvcc:    CUDA ${nvcc_cuda:-?} ($(command -v nvcc || echo 'not on PATH'))"
nvcc --version 2>/dev/null | tail -2
echo "torch:   torch.version.cuda = ${torch_cuda:-?}"
if [[ -n "$driver_cuda" && -n "$nvcc_cuda" ]] && (( ${nvcc_cuda%%.*} > ${driver_cuda%%.*} )); then
  echo "WARNING: nvcc is CUDA $nvcc_cuda but the driver supports only CUDA $driver_cuda:"
  echo "  the kernels built with it cannot run here (fusedrnn raises RuntimeError at the"
  echo "  first call). Build with a toolkit of major version <= ${driver_cuda%%.*}, e.g. the one"
  echo "  torch uses (CUDA $torch_cuda): CUDACXX=/usr/local/cuda-$torch_cuda/bin/nvcc $0"
fi

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || status=1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step "build (pip install --no-build-isolation -e .)"
export FUSEDRNN_CUDA=ON FUSEDRNN_WERROR=ON
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
start=$SECONDS
if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -50 "$OUT/build.log"
  echo "BUILD FAILED"
  exit 1
fi
echo "built in $((SECONDS - start)) s"
$PY -c "import fusedrnn, json; print(json.dumps(fusedrnn.info(), indent=1))"

step "persistent kernel stress (bounded: a barrier that never completes must not take the window)"
timeout "${STRESS_TIMEOUT:-180}" $PY scripts/cuda_stress.py || { echo "cuda_stress: FAILED or timed out"; status=1; }

step "pytest -m cuda"
# Bounded: a kernel that never returns (a grid barrier whose CTAs are not all resident)
# must not take the whole device window with it.
timeout "${PYTEST_TIMEOUT:-300}" $PY -m pytest -m cuda -q -p no:cacheprovider \
  --junitxml="$OUT/pytest_cuda.xml" || { echo "pytest -m cuda: FAILED or timed out"; status=1; }

step "compute-sanitizer"
for tool in memcheck racecheck synccheck initcheck; do
  if timeout "${SANITIZER_TIMEOUT:-240}" compute-sanitizer --tool "$tool" --error-exitcode 9 \
      --log-file "$OUT/sanitizer_$tool.log" $PY scripts/cuda_smoke.py; then
    echo "$tool: clean"
  else
    echo "$tool: FAILED (see $OUT/sanitizer_$tool.log)"; tail -30 "$OUT/sanitizer_$tool.log"; status=1
  fi
done

step "benchmarks"
$PY scripts/bench_cuda.py --out "$OUT" "$@" || status=1

step "kernel paths: persistent vs per-step, both forced via FUSEDRNN_CUDA_PATH"
# The data to set the persistent/per-step boundary in plan_for_kernel, which ignores B
# (at large B the persistent kernel stages h_{t-1} in several passes per step).
$PY scripts/bench_cuda.py --out "$OUT" --paths || status=1

step "summary"
grep -E "passed|failed|error" "$OUT/gpu_check.log" | tail -3
echo "gpu_check status: $status"
exit $status
