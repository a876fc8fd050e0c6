#!/usr/bin/env bash
# Build dgnerf._C in place against the installed torch (serialised by a lock so that parallel
# builds in one checkout never clobber each other). Extra args go to pip.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
exec flock /tmp/dgnerf-build.lock pip install --no-build-isolation --no-deps -e . "$@"
