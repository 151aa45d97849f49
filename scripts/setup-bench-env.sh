#!/usr/bin/env bash
# Create .venv-bench/: the package plus the peers it is measured against (SageMaker SDK); never used by tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv-bench/bin/python ] || "$PY" -m venv .venv-bench
pip=(.venv-bench/bin/python -m pip install --disable-pip-version-check -q)
"${pip[@]}" -r benchmarks/requirements.txt -c requirements/constraints.txt 2>/dev/null \
  || "${pip[@]}" -r benchmarks/requirements.txt  # the SDK may pin protobuf/numpy below our dev pins
"${pip[@]}" --no-deps -e .
"${pip[@]}" scipy pyarrow numba  # recordio's own needs (no torch/ray/spark here)
