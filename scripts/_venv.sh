# Sourced by scripts/test.sh and scripts/demo.sh: make/activate .venv with torch 2.13.0 (CPU build)
# and dgnerf installed editable, built against that torch. $1: the extras to install (e.g. "test").
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel ninja
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q --no-build-isolation -e ".[$1]"
