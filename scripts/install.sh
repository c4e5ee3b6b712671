#!/usr/bin/env bash
# Creates .venv (if missing) and installs the workstation set-up: edgeclip (editable) with the export, cpu
# (ONNX Runtime), openvino, tokenizers, serve, ray, watch and test extras (everything the test suite
# exercises), plus the built-in proxy models (packages/edgeclip-models, editable).
# torch is pinned to the release this project is tested with; pip may take it from a local wheel cache.
# The device runtime alone is `pip install '.[cpu]'` (see README, "Install").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[export,cpu,openvino,tokenizers,serve,ray,watch,test]" -e ./packages/edgeclip-models
.venv/bin/python -c "import edgeclip, torch, onnxruntime, cv2, tokenizers, edgeclip_models; print('edgeclip', edgeclip.__version__, 'ready: run .venv/bin/edgeclip, or source .venv/bin/activate')"
