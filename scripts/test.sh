#!/usr/bin/env bash
# The README's test command: on a fresh machine, make a virtualenv (.venv), install torch 2.13.0
# (CPU build) and the package (building dgnerf._C against that torch), then run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh test
python -m dgnerf info
python -m pytest -q tests "$@"
