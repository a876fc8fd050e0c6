#!/usr/bin/env bash
# Compiles every CUDA source against torch 2.14.1 (CUDA 13 build) for sm_90 and imports the result,
# so that a session without a GPU cannot silently break the CUDA code. Nothing runs on a GPU.
# Uses the virtualenv .venv-cuda (made on first use) and a scratch copy of the sources.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
if [ ! -x .venv-cuda/bin/python ]; then
  "$PY" -m venv .venv-cuda
fi
.venv-cuda/bin/python -m pip install -q --upgrade pip setuptools wheel ninja numpy
.venv-cuda/bin/python -c "import torch; assert torch.version.cuda, torch.__version__" 2>/dev/null \
  || .venv-cuda/bin/python -m pip install -q torch==2.14.1
WORK=$(mktemp -d /tmp/dgnerf-cuda-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp -r setup.py pyproject.toml README.md csrc dgnerf "$WORK"/
rm -f "$WORK"/dgnerf/*.so "$WORK"/dgnerf/_build_meta.json
cd "$WORK"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} DGNERF_CUDA=1
export MAX_JOBS=${MAX_JOBS:-2}
echo "cuda compile check: $("$ROOT"/.venv-cuda/bin/python -c 'import torch;print(torch.__version__)'), nvcc $("$CUDA_HOME"/bin/nvcc --version | tail -1), arch $TORCH_CUDA_ARCH_LIST"
"$ROOT"/.venv-cuda/bin/python setup.py -q build_ext --inplace 2>&1 | grep -Ev "^\[[0-9]+/[0-9]+\]|^(c\+\+|g\+\+|/usr/local/cuda/bin/nvcc) " || true
"$ROOT"/.venv-cuda/bin/python - <<'PY'
import json, sys
import dgnerf
from dgnerf import _ext
if not _ext.loaded:
    sys.exit(f"cuda compile check: the CUDA build does not import: {_ext.load_error}")
missing = sorted(op for (op, dev), ok in _ext.KERNELS.items() if dev == "cpu" and ok and not _ext.KERNELS.get((op, "cuda")))
info = _ext.info()
print(json.dumps({k: info[k] for k in ("torch", "built_against_torch", "cpu_kernels", "cuda_kernels", "cuda_arch_list")}))
if not info["cuda_kernels"] or missing:
    sys.exit(f"cuda compile check: ops without a CUDA kernel: {missing}")
print("cuda compile check: OK, every op with a CPU kernel has a CUDA kernel")
PY
