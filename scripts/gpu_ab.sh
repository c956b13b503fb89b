#!/usr/bin/env bash
# A/B of a kernel change inside one device call, after scripts/gpu_check.sh has built and
# benchmarked the working tree (B): overlay the baseline (A), rebuild, benchmark, restore B,
# rebuild, benchmark again, so the two are timed on the same machine as B, A, B.
#
#   AB_BASE=dir OUT=/some/dir [BUDGET=seconds] [PRECISIONS=fp32] scripts/gpu_ab.sh [bench args]
#
# AB_BASE holds the baseline's versions of the changed files at their paths in the tree,
# made before the call, e.g. `mkdir -p ab_base/csrc/cuda && git show HEAD~1:csrc/cuda/x.cuh >
# ab_base/csrc/cuda/x.cuh` (an untracked directory travels with the working tree). $OUT gets
# gpu_ab.log (this output) and ab_results.tgz (ab_base/ and ab_new/ with bench_cuda.{json,md},
# and the build logs; rewritten after each step). The tree is restored on exit, whatever
# happens.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${AB_BASE:?AB_BASE: a directory of baseline files (see the header)}"
OUT=${OUT:-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu_ab.log") 2>&1
PY=${PYTHON:-python3}
RES=$(mktemp -d)
save() { tar czf "$OUT/ab_results.tgz" -C "$RES" . 2>/dev/null; }
DEADLINE=$((SECONDS + ${BUDGET:-120}))
[[ -d "$AB_BASE" ]] || { echo "AB_BASE: no directory $AB_BASE"; exit 2; }
mapfile -t files < <(cd "$AB_BASE" && find . -type f | sed 's|^\./||' | sort)
((${#files[@]})) || { echo "AB_BASE: $AB_BASE holds no files"; exit 2; }
for f in "${files[@]}"; do
  [[ -f "$f" ]] || { echo "AB_BASE: $f is not a file of the tree"; exit 2; }
done
SAVE=$(mktemp -d)
for f in "${files[@]}"; do mkdir -p "$SAVE/$(dirname "$f")" && cp "$f" "$SAVE/$f"; done
# Plain cp (no -p) both ways: each swapped file is newer than the last build's outputs, so
# the incremental rebuild recompiles what includes it.
restore() { for f in "${files[@]}"; do cp "$SAVE/$f" "$f"; done; }
installed=tree  # what the installed _C_cuda was built from: tree, baseline or unknown
finish() {
  restore
  save
  if [[ $installed != tree ]]; then
    echo "WARNING: the installed _C_cuda is not the tree's build ($installed); rebuild with"
    echo "  $PY -m pip install --no-build-isolation --no-deps -e ."
  fi
}
trap finish EXIT
# checksum: the first 12 hex digits of the installed _C_cuda's md5 ("?" when it does not import)
checksum() {
  local sum
  sum=$($PY -c 'import fusedrnn._C_cuda as m; print(m.__file__)' 2>/dev/null | xargs -r md5sum |
    cut -c1-12)
  echo "${sum:-?}"
}

export FUSEDRNN_CUDA=ON FUSEDRNN_WERROR=ON
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
status=0

# build_and_bench NAME WHAT: install the tree as it is now (WHAT: baseline or tree) and run the
# benchmarks into $RES/NAME.
build_and_bench() {
  local name=$1 what=$2 left start=$SECONDS
  shift 2
  left=$((DEADLINE - SECONDS - 5))
  if ((left < 30)); then echo "skipped (budget spent): $name"; status=1; return; fi
  echo; echo "== $name: build (t=${SECONDS}s)"
  installed=unknown  # until the build succeeds: a failed one may have replaced it or not
  if ! timeout --kill-after=5 "$left" $PY -m pip install --no-build-isolation --no-deps -e . \
      > "$RES/build_$name.log" 2>&1; then
    tail -30 "$RES/build_$name.log"; echo "BUILD FAILED: $name"; status=1; return
  fi
  installed=$what
  echo "built in $((SECONDS - start)) s; _C_cuda $(checksum)"
  left=$((DEADLINE - SECONDS - 5))
  if ((left < 15)); then echo "skipped (budget spent): bench $name"; status=1; return; fi
  timeout --kill-after=5 "$left" $PY scripts/bench_cuda.py --out "$RES/$name" \
    ${PRECISIONS:+--precisions $PRECISIONS} "$@" || status=1
  save
}

echo "baseline files: ${files[*]}"
echo "installed before: _C_cuda $(checksum)"
for f in "${files[@]}"; do cp "$AB_BASE/$f" "$f"; done
build_and_bench ab_base baseline "$@"
restore
build_and_bench ab_new tree "$@"
echo "(the baseline's _C_cuda checksum must differ from the other two, or it was not rebuilt)"
echo; echo "gpu_ab status: $status (t=${SECONDS}s)"
exit $status
