#!/usr/bin/env bash
# The main job on the built-in default model: export -> quantize (synthetic calibration) -> classify.
# Writes everything under out/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
EC=.venv/bin/edgeclip
DATA=${EDGECLIP_DATA:-../shared/data}
mkdir -p out/photos
tar -xf "$DATA/cifar10-test.tar" -C out/photos
$EC export --out out/bundle --overwrite
$EC quantize out/bundle --calib text-guided          # --target auto: the recipe this machine runs best
$EC inspect out/bundle
$EC classify out/bundle out/photos/cifar10/test/ship out/photos/cifar10/test/cat --precision int8 --top-k 3 \
    --output out/predictions.csv
$EC eval out/bundle out/photos/cifar10/test --precision int8 --limit 2000 --json out/eval-int8.json \
    --confusion out/confusion-int8.png
echo "done: bundle in out/bundle, predictions in out/predictions.csv, report in out/eval-int8.json"
