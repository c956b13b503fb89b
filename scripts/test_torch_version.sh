#!/usr/bin/env bash
# The whole test suite against another torch (and Python, and NumPy): a fresh virtual
# environment under build/, torch from the package index, fusedrnn built there (CPU only
# unless FUSEDRNN_CUDA says otherwise), then `pytest`. How the floor in pyproject.toml
# (`torch>=X,<3`, checked at import) was found; docs/dropin.md lists the versions tested.
#   bash scripts/test_torch_version.sh TORCH_VERSION [PYTHON] [PIP_REQUIREMENT...]
#   bash scripts/test_torch_version.sh 2.10.0 python3.10 numpy==1.24.4   # the oldest set
# PyPI's torch for x86-64 Linux is the CUDA build (~3 GB with its libraries); it runs the CPU
# tests as well. Where the pip configuration caps torch (a constraints file), run with
# PIP_CONSTRAINT=/dev/null. Extra pytest arguments: PYTEST_ARGS="-x -q".
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { sed -n 2,10p "$0" >&2; exit 2; }
version=$1
python=${2:-python3}
shift $(($# >= 2 ? 2 : 1))
env_dir=build/torch-$version-$("$python" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')
"$python" -m venv --clear "$env_dir"
# shellcheck disable=SC1091
source "$env_dir/bin/activate"
python -m pip install --quiet --upgrade pip
pip install --quiet "torch==$version" "$@"
FUSEDRNN_CUDA=${FUSEDRNN_CUDA:-OFF} pip install --quiet -C "build-dir=$env_dir/build" '.[test]'
python -c 'import sys, numpy, torch; print("python", sys.version.split()[0], "torch",
  torch.__version__, "numpy", numpy.__version__)'
# shellcheck disable=SC2086
python -m pytest -p no:cacheprovider ${PYTEST_ARGS:-}
