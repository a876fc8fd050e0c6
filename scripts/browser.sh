#!/usr/bin/env bash
# Debian's chromium + chromium-driver for the viewer's browser tests (tests/test_viewer_browser.py, which
# skip without them). Installs only what is missing; needs root (CI runs as root) and Debian's package mirror.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "chromium and chromedriver: present ($(chromium --version 2>/dev/null | head -1))"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
echo "installed: $(chromium --version 2>/dev/null | head -1)"
