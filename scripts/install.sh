#!/usr/bin/env bash
# Creates .venv (if missing) and installs edgeclip with the export and test extras.
# torch is pinned to the release this project is tested with; pip may take it from a local wheel cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[export,test]"
.venv/bin/python -c "import edgeclip, torch, onnxruntime, cv2; print('edgeclip', edgeclip.__version__, 'ready')"
