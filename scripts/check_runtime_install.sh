#!/usr/bin/env bash
# CI: the device runtime on its own. Installs '.[cpu]' and tokenizers without its dependencies into a fresh venv
# (no torch, no onnx, no OpenCV, no huggingface_hub; 200 MB at most, then the whole tokenizers extra at most
# 60 MB more); runs classify, labels, inspect, eval and stream there on a bundle made by the full install
# (.venv, from scripts/install.sh), then classify and relabel on the tiny model of every family (SigLIP's with a
# tokenizer trained here) and on a packed bundle, checks that export, quantize and a video source exit 2 with the
# pip line, and dry-runs the README's Jetson install and every install line of the docs (tests/test_install.py,
# needs PyPI).
# Usage: bash scripts/check_runtime_install.sh   (after scripts/install.sh; RT_VENV=DIR to keep the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=${EDGECLIP_DATA:-$ROOT/../shared/data}
RT=${RT_VENV:-/tmp/edgeclip-rt-venv}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say() { echo "[runtime-install] $*"; }
fail() { echo "[runtime-install] FAILED: $*" >&2; exit 1; }

PY=$(.venv/bin/python -c "import sys; print(sys.base_prefix)")/bin/python3
rm -rf "$RT"
"$PY" -m venv "$RT"
site_kb() {  # the venv's site-packages, less what the venv itself brings (pip, setuptools and its helpers)
    du -sk --exclude='pip' --exclude='pip-*' --exclude='setuptools' --exclude='setuptools-*' \
        --exclude='pkg_resources' --exclude='_distutils_hack' --exclude='distutils-precedence.pth' "$SITE" | cut -f1
}
# the runtime every device gets ('.[cpu]') has the 200 MB limit; the tokenizers library (SigLIP bundles only)
# is installed without its dependencies for the runs below (the runtime never imports huggingface_hub), and the
# whole tokenizers extra, huggingface_hub with it, is measured at the end
"$RT/bin/python" -m pip install -q --disable-pip-version-check "$ROOT[cpu]"
SITE=$("$RT/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
KB=$(site_kb)
say "runtime venv site-packages ('.[cpu]', minus pip/setuptools): $((KB / 1024)) MB"
[ "$KB" -le $((200 * 1024)) ] || fail "runtime install is $((KB / 1024)) MB (limit 200 MB)"
"$RT/bin/python" -m pip install -q --disable-pip-version-check --no-deps "tokenizers>=0.19"
say "tokenizers without its dependencies adds $(( ($(site_kb) - KB) / 1024 )) MB"
"$RT/bin/python" - <<'EOF' || fail "the runtime install pulled in an export-side or optional package"
import importlib.util
heavy = [m for m in ("torch", "torchvision", "open_clip", "onnx", "cv2", "matplotlib", "transformers", "edgeclip_models",
                     "huggingface_hub")
         if importlib.util.find_spec(m)]
assert not heavy, f"installed with the runtime: {heavy}"
EOF

# a bundle from the full install, and real photos
.venv/bin/edgeclip -q export --model edgeclip-tiny-vit --labels cat dog ship truck --out "$WORK/bundle"
.venv/bin/edgeclip -q quantize "$WORK/bundle" --target cpu --images 8 --steps 10
tar -xf "$DATA/cifar10-test.tar" -C "$WORK"
mkdir -p "$WORK/photos"
for c in cat dog ship truck; do
    mkdir -p "$WORK/photos/$c"
    cp "$WORK"/cifar10/test/$c/00[0-1]?.jpg "$WORK/photos/$c/"
done
.venv/bin/python -c "
import cv2, numpy as np
w = cv2.VideoWriter('$WORK/clip.avi', cv2.VideoWriter_fourcc(*'MJPG'), 10, (64, 48))
[w.write(np.full((48, 64, 3), 40 * i, np.uint8)) for i in range(5)]
w.release()"

cd "$WORK"  # not the source tree: the venv's own edgeclip runs
EC="$RT/bin/edgeclip"
"$EC" -q classify bundle photos --precision int8 --top-k 2 -o preds.csv
[ "$(wc -l < preds.csv)" -eq 81 ] || fail "classify wrote $(wc -l < preds.csv) lines, expected 81"
"$EC" -q labels bundle --labels cat dog ship truck airplane
"$EC" inspect bundle > inspect.txt
"$EC" -q eval bundle photos --json eval.json
"$RT/bin/python" -c "import json; r = json.load(open('eval.json')); assert r['count'] == 80, r['count']" \
    || fail "eval did not score 80 images"
"$EC" -q stream bundle --source photos/cat --jsonl events.jsonl
[ -s events.jsonl ] || fail "stream wrote no events"
say "classify, labels, inspect, eval, stream: ok without torch, onnx and OpenCV"

# every model family: the tiny random-weight model of each, exported by the full install, then classified and
# relabelled here; and a bundle packed for this machine's profile with an INT8 text encoder
cd "$ROOT"
PYTHONPATH="$ROOT/tests" .venv/bin/python -c "
from pathlib import Path
from local_tokenizers import siglip_tokenizer, siglip2_tokenizer
siglip_tokenizer(Path('$WORK/tok/siglip')); siglip2_tokenizer(Path('$WORK/tok/siglip2'))"
FAMILIES=$(.venv/bin/python -c "from edgeclip.tables import FAMILIES; print(' '.join(f'{f.name}:{f.tiny}' for f in FAMILIES.values()))")
for entry in $FAMILIES; do
    fam=${entry%%:*}; model=${entry#*:}
    tok=(); [ -d "$WORK/tok/$fam" ] && tok=(--tokenizer "$WORK/tok/$fam")
    .venv/bin/edgeclip -q export --model "$model" --labels cat dog ship truck --out "$WORK/fam-$fam" "${tok[@]}"
done
.venv/bin/edgeclip -q pack "$WORK/bundle" --out "$WORK/packed"
cd "$WORK"
for entry in $FAMILIES; do
    fam=${entry%%:*}
    "$EC" -q classify "fam-$fam" photos/cat --top-k 2 -o "fam-$fam.csv"
    [ "$(wc -l < "fam-$fam.csv")" -eq 21 ] || fail "$fam: classify wrote $(wc -l < "fam-$fam.csv") lines, expected 21"
    "$EC" -q labels "fam-$fam" --labels cat dog ship truck airplane
done
"$EC" -q classify packed photos/ship -o packed.csv
"$EC" -q labels packed --labels cat dog ship truck airplane
"$EC" inspect packed | grep -q "^packed " || fail "inspect does not show the packed bundle's pack section"
"$RT/bin/python" -c "import importlib.util, sys; sys.exit(bool(importlib.util.find_spec('torch')))" \
    || fail "torch appeared in the runtime venv"
say "every family ($(echo $FAMILIES | wc -w)) and a packed bundle: classify and relabel ok without torch"

expect_2() {  # expect_2 EXTRA ARGS...: exit 2, one line naming the extra and the pip command
    local extra=$1; shift
    set +e; "$EC" "$@" > out.txt 2> err.txt; local rc=$?; set -e
    [ "$rc" -eq 2 ] || fail "edgeclip $* exited $rc, expected 2: $(cat err.txt)"
    [ "$(wc -l < err.txt)" -eq 1 ] || fail "edgeclip $*: expected one line, got: $(cat err.txt)"
    grep -q -- "-m pip install .*\[$extra\]" err.txt || fail "edgeclip $*: no pip line for [$extra]: $(cat err.txt)"
    [ ! -s out.txt ] || fail "edgeclip $*: work was done before the check: $(cat out.txt)"
    say "edgeclip $1: exit 2, $(cut -c1-140 err.txt)"
}
expect_2 export export --out new-bundle
[ ! -e new-bundle ] || fail "export created its output folder"
expect_2 export quantize bundle --target cpu
expect_2 opencv stream bundle --source clip.avi
expect_2 opencv eval bundle photos --confusion c.png
expect_2 report bench bundle --png b.png

"$RT/bin/python" -m pip install -q --disable-pip-version-check "$ROOT[cpu,tokenizers]"
TKB=$(( $(site_kb) - KB ))
say "the tokenizers extra, huggingface_hub with it, adds $((TKB / 1024)) MB"
[ "$TKB" -le $((60 * 1024)) ] || fail "the tokenizers extra adds $((TKB / 1024)) MB (limit 60 MB)"

cd "$ROOT"
say "the README's Jetson install and every install line of the docs, dry-run"
.venv/bin/python -m pytest -q -p no:cacheprovider -m slow tests/test_install.py -k "jetson or install_lines"
say "ok"
