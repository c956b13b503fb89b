#!/usr/bin/env bash
# One call on a lent GPU machine: build fusedrnn with its CUDA kernels, stress the persistent
# kernel and, on Hopper, the cluster kernel (scripts/cuda_stress.py), run the CUDA tests
# (the cluster kernel as a third path on Hopper), the GPU benchmarks, compute-sanitizer
# (memcheck, racecheck, synccheck, initcheck) on a small case, the tests on tensors past 2^31
# elements (tests/test_large.py), the kernel comparison (persistent,
# per-step and on Hopper the cluster kernel, each forced), a breakdown of the training step (scripts/cuda_breakdown.py) and an Nsight
# Compute profile of one persistent launch. Results: build.log, pytest_cuda.xml, sanitizer
# logs, bench_cuda.{json,md}, cuda_breakdown.md, bench_paths.{json,md}, ncu* (in
# $OUT/results.tgz, below). Pass --full for the issue's full benchmark
# grid. It starts by printing the driver, nvcc and torch CUDA versions.
#
#   OUT=/some/dir [BUDGET=seconds] [SANITIZER_TOOLS="memcheck ..."] [PATHS=0] [PROFILE=0] \
#     [BREAKDOWN=0] [LARGE=0] [PRECISIONS=fp32,bf16] scripts/gpu_check.sh [--full]
#
# BUDGET (default 520) bounds the whole run: each step runs under `timeout` for the smaller of
# its own cap and what is left, and a step with under 15 s left is skipped, so the script ends
# inside a device call's limit with its results written. $OUT receives two files, since a
# device call brings back at most 8: gpu_check.log (this output) and results.tgz (every other
# file, rewritten after each step, so a run cut short still returns what it finished).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
RES=$(mktemp -d)
DEADLINE=$((SECONDS + ${BUDGET:-520}))
status=0
step() { echo; echo "== $* (t=${SECONDS}s)"; }
save() { tar czf "$OUT/results.tgz" -C "$RES" . 2>/dev/null; }
# bounded CAP CMD...: run CMD under timeout min(CAP, time left - 5); 124 when skipped.
bounded() {
  local cap=$1 left=$((DEADLINE - SECONDS - 5))
  shift
  ((left < cap)) && cap=$left
  if ((cap < 15)); then echo "skipped (budget spent): $*"; return 124; fi
  timeout --kill-after=5 "$cap" "$@"
}

# sanitize TOOL PREFIX [KERNEL...]: compute-sanitizer TOOL on scripts/cuda_smoke.py with those
# kernels (default: persistent and per-step); log in $RES/${PREFIX}sanitizer_TOOL.log, status
# 1 on a report.
sanitize() {
  local tool=$1 prefix=$2 log
  shift 2
  log="$RES/${prefix}sanitizer_$tool.log"
  if bounded "${SANITIZER_TIMEOUT:-90}" compute-sanitizer --tool "$tool" \
      --error-exitcode 9 --log-file "$log" $PY scripts/cuda_smoke.py "$@"; then
    echo "$prefix$tool: clean"
  else
    echo "$prefix$tool: FAILED or timed out"; tail -30 "$log"; status=1
  fi
}

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
if ! bounded 300 $PY -m pip install --no-build-isolation --no-deps -e . > "$RES/build.log" 2>&1; then
  tail -50 "$RES/build.log"
  save
  echo "BUILD FAILED"
  exit 1
fi
echo "built in $((SECONDS - start)) s"
grep -iE "warning|spill|lmem|registers" "$RES/build.log" | head -20
save
$PY -c "import fusedrnn, json; print(json.dumps(fusedrnn.info(), indent=1))"

# Whether the GPU has thread-block clusters (compute capability 9.0): the cluster kernel, forced,
# is then checked in steps of its own (separate processes). Since session 26 `auto` also takes
# it on Hopper at small sizes, so the auto tests, the benchmarks and the breakdown run it too:
# a fault of it is no longer kept out of those steps, which their time limits still bound.
CLUSTER=$($PY -c "import torch; print(int(torch.cuda.get_device_capability()[0] >= 9))" 2>/dev/null)
echo "thread-block clusters: ${CLUSTER:-?}"
# cluster_done RC WHAT: a cluster step's exit status. A failure is reported and the later
# cluster steps still run (their reports say more); a timeout (a cluster barrier that never
# completes) ends the cluster kernel's steps, which would each hang until their own limit.
cluster_done() {
  (($1 == 0)) && return 0
  status=1
  if (($1 == 124 || $1 == 137)); then
    echo "$2: timed out: the cluster kernel's remaining steps are skipped"
    CLUSTER=hung
  else
    echo "$2: FAILED"
  fi
}

step "persistent kernel stress (bounded: a barrier that never completes must not take the window)"
bounded "${STRESS_TIMEOUT:-90}" $PY scripts/cuda_stress.py || { echo "cuda_stress: FAILED or timed out"; status=1; }
if [[ "$CLUSTER" == 1 ]]; then
  step "cluster kernel stress"
  # 40 s: the persistent kernel's stress took 9 s on the H200 (session 21), import included.
  bounded "${CLUSTER_STRESS_TIMEOUT:-40}" $PY scripts/cuda_stress.py cluster
  cluster_done $? "cuda_stress cluster"
fi

step "pytest -m cuda"
# Bounded: a kernel that never returns (a grid barrier whose CTAs are not all resident)
# must not take the whole device window with it.
bounded "${PYTEST_TIMEOUT:-240}" $PY -m pytest -m cuda -k "not cluster" -q -p no:cacheprovider \
  -rfE --junitxml="$RES/pytest_cuda.xml" || { echo "pytest -m cuda: FAILED or timed out"; status=1; }
save
if [[ "$CLUSTER" == 1 ]]; then
  step "pytest -m cuda -k cluster (the cluster kernel)"
  bounded "${PYTEST_TIMEOUT:-240}" $PY -m pytest -m cuda -k cluster -q -p no:cacheprovider -rfE \
    --junitxml="$RES/pytest_cuda_cluster.xml"
  cluster_done $? "pytest -m cuda -k cluster"
  save
fi

step "benchmarks"
# PRECISIONS (comma-separated, e.g. fp32) shortens the grid to those precisions.
bounded "${BENCH_TIMEOUT:-150}" $PY scripts/bench_cuda.py --out "$RES" \
  ${PRECISIONS:+--precisions $PRECISIONS} "$@" || status=1
save

step "training step breakdown: wall, host and kernel times, fusedrnn vs cuDNN"
# scripts/cuda_breakdown.py: whether a training step is bound by the host or the device, and
# which kernels take its time (BREAKDOWN=0 skips it).
if [[ "${BREAKDOWN:-1}" == 1 ]]; then
  bounded "${BREAKDOWN_TIMEOUT:-60}" $PY scripts/cuda_breakdown.py --out "$RES" --host-ops 15 || status=1
else
  echo "skipped (BREAKDOWN=0)"
fi
save

step "compute-sanitizer"
for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck initcheck}; do
  sanitize "$tool" ""
  save
done
if [[ "$CLUSTER" == 1 ]]; then
  # (whether racecheck follows st.shared::cluster and barrier.cluster is not established: a
  # clean report is no proof that the exchange between CTAs is race-free)
  compute-sanitizer --version 2>/dev/null | tail -1
  for tool in memcheck racecheck; do
    sanitize "$tool" cluster_ cluster
    save
  done
fi

step "tensors past 2^31 elements (tests/test_large.py, FUSEDRNN_LARGE_TESTS=1)"
# The persistent and per-step kernels on outputs of more than 2^31 elements (56 GiB of GPU
# memory, 100 for the "wide" cases: each case skips itself, with the reason in the log, on a
# GPU with less). LARGE=0 skips it.
if [[ "${LARGE:-1}" == 1 ]]; then
  FUSEDRNN_LARGE_TESTS=1 bounded "${LARGE_TIMEOUT:-120}" $PY -m pytest tests/test_large.py \
    -m cuda -q -p no:cacheprovider -rfEs --junitxml="$RES/pytest_large.xml" \
    || { echo "large tensors: FAILED or timed out"; status=1; }
else
  echo "skipped (LARGE=0)"
fi
save

step "kernel paths: each kernel forced via FUSEDRNN_CUDA_PATH (the cluster kernel last)"
# The data behind auto's batch limit in plan_for_kernel (docs/cuda_kernels.md, "Boundary");
# PATHS=0 skips it.
if [[ "${PATHS:-1}" == 1 ]]; then
  paths_args=(--paths)
  [[ "$CLUSTER" == hung ]] && paths_args+=(--no-cluster)
  bounded "${PATHS_TIMEOUT:-90}" $PY scripts/bench_cuda.py --out "$RES" "${paths_args[@]}" || status=1
else
  echo "skipped (PATHS=0)"
fi
save

# Where the persistent step's time goes: Nsight Compute on one forward launch at B=1, H=1024
# (warp stall reasons in ncu_details.txt, the sampling by SASS line in ncu_source.csv).
# PROFILE=0 skips it; a machine that refuses performance counters says so here.
step "profile: ncu on the persistent kernel (B=1, H=1024, T=100)"
if [[ "${PROFILE:-1}" == 1 ]] && command -v ncu > /dev/null; then
  ncu_args=(--kernel-name regex:rnn_persistent --launch-skip 3 --launch-count 1
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats
    --section SourceCounters --section LaunchStats --section Occupancy)
  rep=$(mktemp -d)/ncu  # the report itself stays out of results.tgz (size)
  pre="$RES/ncu"
  bounded "${PROFILE_TIMEOUT:-60}" ncu "${ncu_args[@]}" -o "$rep" $PY scripts/cuda_profile.py \
    > "$pre.log" 2>&1 || echo "ncu: FAILED or timed out (diagnostic only)"
  tail -3 "$pre.log"
  if [[ -f "$rep.ncu-rep" ]]; then
    ncu --import "$rep.ncu-rep" --page details > "${pre}_details.txt" 2>&1
    ncu --import "$rep.ncu-rep" --page source --print-source sass --csv > "${pre}_source.csv" 2>&1
    grep -iE "duration|warp cycles per issued" "${pre}_details.txt" | head -4
  fi
  save
else
  echo "skipped (PROFILE=0 or no ncu)"
fi

step "summary"
grep -E "passed|failed|error" "$OUT/gpu_check.log" | tail -3
echo "gpu_check status: $status"
exit $status
