#!/usr/bin/env bash
# The README's test command: on a fresh machine, make a virtualenv (.venv), install torch 2.13.0
# (CPU build) and the package (building dgnerf._C against that torch), then run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel ninja
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q --no-build-isolation -e '.[test]'
python -m dgnerf info
python -m pytest -q tests "$@"
