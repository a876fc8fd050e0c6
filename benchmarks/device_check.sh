#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (torch 2.11 cu130, nvcc 13.0, 16 cores, no internet), in ONE
# call of the device tool, well inside 8 minutes:
#   run(command="bash benchmarks/device_check.sh", timeout_s=560)
# It builds dgnerf._C against the machine's torch (<= 270 s), runs the CUDA tests (<= 100 s) and the
# GPU benchmarks (<= 150 s; the CPU suite is CI's job), then the variant probe (<= 120 s, benchmarks/gpu_probe.py), and leaves under $OUT: check.log (everything), info.json, tests.txt, bench.txt and the
# benchmark JSON (cuda-*.json). The last lines printed are a short summary table.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dgnerf-device-out}
mkdir -p "$OUT"
LOG="$OUT/check.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
fi
export CUDA_HOME DGNERF_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
PY=${PYTHON:-python3}
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $* =="; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
$PY -c "import torch;print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
echo "CUDA_HOME=$CUDA_HOME; $("$CUDA_HOME"/bin/nvcc --version | tail -1)"

stamp "build (against this machine's torch)"
rm -f dgnerf/_C*.so dgnerf/_build_meta.json
if ! timeout 270 $PY setup.py -q build_ext --inplace > "$OUT/build.txt" 2>&1; then
  tail -60 "$OUT/build.txt"
  stamp "BUILD FAILED"
  exit 1
fi
grep -iE "warning|error" "$OUT/build.txt" | grep -v "^\[" | head -20
$PY -m dgnerf info | tee "$OUT/info.json"

stamp "CUDA tests"
timeout 100 $PY -m pytest -q -m cuda tests -p no:cacheprovider -rfE 2>&1 | tee "$OUT/tests.txt" | tail -25
stamp "GPU benchmarks"
DGNERF_BENCH_DIR="$OUT" DGNERF_BENCH_DEVICES=cuda timeout 150 $PY -m pytest -q benchmarks -s -p no:cacheprovider 2>&1 \
  | tee "$OUT/bench.txt" | tail -40
stamp "GPU variant probe (eager vs CUDA graph; MLP, renderer, frame)"
timeout 120 $PY -m benchmarks.gpu_probe "$OUT/probe.json" 2>&1 | tee "$OUT/probe.txt" | tail -40
if command -v ncu >/dev/null; then
  stamp "Nsight Compute: one fused MLP launch (stall reasons, pipe use)"
  timeout 90 ncu --kernel-name regex:field_mlp_fused --launch-skip 2 --launch-count 1 --section SpeedOfLight \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section LaunchStats --section Occupancy --section InstructionStats $PY -m benchmarks.ncu_mlp \
    > "$OUT/ncu.txt" 2>&1
  tail -80 "$OUT/ncu.txt" | cut -c1-160
fi
stamp "done; files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
