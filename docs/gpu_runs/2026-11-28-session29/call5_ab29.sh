#!/usr/bin/env bash
# session 29, one call: build, pytest -m cuda (the CUDA lean path's tests included), then the
# quick fp32 grid and the host profile with the lean path on and off (A/B/A in one process each).
export FUSEDRNN_CUDA=ON FUSEDRNN_WERROR=ON CMAKE_BUILD_PARALLEL_LEVEL=16 PYTHONUNBUFFERED=1
python3 -m pip install --no-build-isolation --no-deps -e . > $OUT/build.log 2>&1 || { tail -20 $OUT/build.log; exit 1; }
echo "built t=$SECONDS"
timeout 110 python3 -m pytest -m cuda -q -p no:cacheprovider -rfE --junitxml=$OUT/pytest_cuda.xml 2>&1 | tail -25
echo "pytest t=$SECONDS"
off='import sys, runpy; import fusedrnn.ops as o; o.fast_input_cuda = lambda x: False; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")'
for v in on off on; do
  mkdir -p $OUT/q_$v
  if [[ $v == on ]]; then P=(python3); else P=(python3 -c "$off"); fi
  timeout 30 "${P[@]}" scripts/bench_cuda.py --out $OUT/q_$v --precisions fp32 2>&1 | grep -E "^fp32" | sed "s/^/$v /"
  timeout 20 "${P[@]}" scripts/cuda_host_profile.py --case 1x256x100 --repeats 100 --steps 10 --top 0 2>&1 | sed -n 3,6p | sed "s/^/$v /"
  echo "t=$SECONDS"
done
