#!/usr/bin/env bash
# The README's main-job command: set up .venv (torch 2.13.0 CPU + dgnerf, built against it), then run
# `dgnerf demo`, which builds the built-in head set, trains a small model on this CPU and writes out/.
# Extra arguments go to `dgnerf demo` (e.g. --steps 500 --out out2).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh train
python -m dgnerf demo "$@"
