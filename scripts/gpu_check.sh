#!/usr/bin/env bash
# One call on a lent GPU machine: build fusedrnn with its CUDA kernels, run the CUDA tests,
# compute-sanitizer (memcheck, racecheck, synccheck) on a small case, and the GPU
# benchmarks. Everything goes to $OUT (default ./out): gpu_check.log, pytest_cuda.xml,
# sanitizer logs, bench_cuda.{json,md}. Pass --full for the issue's full benchmark grid.
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

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || status=1
nvcc --version | tail -2
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

step "pytest -m cuda"
$PY -m pytest -m cuda -q -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml" || status=1

step "compute-sanitizer"
for tool in memcheck racecheck synccheck; do
  if timeout "${SANITIZER_TIMEOUT:-240}" compute-sanitizer --tool "$tool" --error-exitcode 9 \
      --log-file "$OUT/sanitizer_$tool.log" $PY scripts/cuda_smoke.py; then
    echo "$tool: clean"
  else
    echo "$tool: FAILED (see $OUT/sanitizer_$tool.log)"; tail -30 "$OUT/sanitizer_$tool.log"; status=1
  fi
done

step "benchmarks"
$PY scripts/bench_cuda.py --out "$OUT" "$@" || status=1

step "summary"
grep -E "passed|failed|error" "$OUT/gpu_check.log" | tail -3
echo "gpu_check status: $status"
exit $status
