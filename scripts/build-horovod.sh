#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (PyTorch + Gloo, no MPI/TF/MXNet) into .venv from a patched sdist.
# Horovod 0.28.1 is the newest release and compiles against torch 2.13 only with C++17 (design.md).
# Idempotent: exits early when horovod.torch already imports. Usage: scripts/build-horovod.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
VERSION=0.28.1
if "$PY" -c "import horovod.torch, horovod.common.basics as b, inspect; assert 'RTLD_LOCAL' in inspect.getsource(b)" 2>/dev/null; then
  echo "horovod.torch already importable: $("$PY" -c 'import horovod; print(horovod.__version__)')"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip=("$PY" -m pip --disable-pip-version-check)
"${pip[@]}" install -q -c requirements/constraints.txt "cmake==4.4.4" packaging wheel setuptools
"${pip[@]}" download -q --no-deps --no-binary :all: -d "$work" "horovod==$VERSION"
tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
src="$work/horovod-$VERSION"
for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
  grep -q 'set(CMAKE_CXX_STANDARD 14)' "$f" || { echo "unexpected $f: no CMAKE_CXX_STANDARD 14" >&2; exit 1; }
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$f"
done
# Horovod dlopens its extension RTLD_GLOBAL (for MPI plugins, absent here), which puts torch's libs in the global
# symbol scope; libxgboost then binds its std::regex internals to torch's incompatible copies and aborts with
# "free(): invalid pointer" in Booster.load_model. Load it RTLD_LOCAL (ctypes only calls the horovod_* C API).
basics="$src/horovod/common/basics.py"
grep -q 'ctypes.CDLL(full_path, mode=ctypes.RTLD_GLOBAL)' "$basics" || { echo "unexpected $basics" >&2; exit 1; }
sed -i 's/ctypes.CDLL(full_path, mode=ctypes.RTLD_GLOBAL)/ctypes.CDLL(full_path, mode=ctypes.RTLD_LOCAL)/' "$basics"
MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} CMAKE_POLICY_VERSION_MINIMUM=3.5 \
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
  "${pip[@]}" install --no-build-isolation "$src"
"$PY" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else '', 'gloo built:', hvd.gloo_built())"
