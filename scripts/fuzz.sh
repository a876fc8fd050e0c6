#!/usr/bin/env bash
# The long hardening runs: the fuzz campaign (>= 1200 CLI, 600 file, 600 op cases; tests/fuzz/) and the 20-kill
# SIGKILL training run (tests/test_train_faults.py). Niced; the workers run under a memory limit.
#   scripts/fuzz.sh                 # seed 1, report in fuzz_report.json
#   SEED=5 scripts/fuzz.sh -x       # another seed; extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export DGNERF_FUZZ_SEED=${SEED:-1}
export DGNERF_FUZZ_REPORT=${REPORT:-$PWD/fuzz_report.json}
exec nice -n 10 "$PY" -m pytest -q -s -m long tests/fuzz/test_fuzz.py tests/test_train_faults.py -p no:cacheprovider "$@"
