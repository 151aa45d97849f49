#!/usr/bin/env bash
# Create or refresh .venv/ with the pinned dev/CI working set. Idempotent: a stamp skips work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp_src=$(cat requirements/constraints.txt requirements/spark35.txt setup.cfg pyproject.toml scripts/setup-env.sh scripts/build-horovod.sh \
  | sha256sum | cut -c1-16)
# The staging encoder's jar (sparkml_ext/jvm): one javac against pyspark's jars into a cache outside the repo, keyed
# by the source and Spark version (a no-op once built). Without a JDK staging encodes in Python: a warning, not an error.
build_jvm_encoder() {
  .venv/bin/python -m sparkml_ext.jvm >/dev/null || echo "warning: JVM staging encoder not built" >&2
  if [ -d .venv/spark35/pyspark ]; then  # and against Spark 3.5, for tests/test_spark35.py
    PYTHONPATH=.venv/spark35 .venv/bin/python -m sparkml_ext.jvm >/dev/null || echo "warning: (Spark 3.5)" >&2
  fi
}
if [ -f .venv/.stamp ] && [ "$(cat .venv/.stamp)" = "$stamp_src" ]; then
  build_jvm_encoder
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip setuptools wheel
# torch first, pinned: the CPU wheel on local disk; anything wider downloads a CUDA build.
"${pip[@]}" torch==2.13.0 -c requirements/constraints.txt
"${pip[@]}" -c requirements/constraints.txt -e '.[all,dev]'
# Spark 3.5 beside Spark 4, for the compatibility test only (tests/test_spark35.py layers it over .venv).
rm -rf .venv/spark35
"${pip[@]}" --no-deps --target .venv/spark35 -r requirements/spark35.txt
# Horovod's backend is tested in CI: patched build from source (a few minutes, once per .venv).
bash scripts/build-horovod.sh .venv/bin/python
echo "$stamp_src" > .venv/.stamp
build_jvm_encoder
