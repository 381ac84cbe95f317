#!/usr/bin/env bash
# One command from a fresh machine to SLD training of resnet32x4 -> resnet8x4 on CIFAR-100:
#   1. a virtual environment (.venv, or $SLKD_VENV) with torch, slkd and its test tools;
#   2. mdistiller: the checkout in $SLKD_MDISTILLER_PATH, else ./mdistiller cloned at a08d46f
#      ($SLKD_MDISTILLER_REPO and $SLKD_MDISTILLER_COMMIT choose another);
#   3. the CIFAR-100 teachers and the dataset, checked after download;
#   4. slkd-train with mdistiller_configs/cifar100/sld/res32x4_res8x4.yaml (extra arguments
#      are passed on, e.g. `bash scripts/quickstart.sh --amp bf16`).
# Offline, it says what could not be fetched and runs the smoke run instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SLKD_VENV:-.venv}"
REPO="${SLKD_MDISTILLER_REPO:-https://github.com/megvii-research/mdistiller}"
COMMIT="${SLKD_MDISTILLER_COMMIT:-a08d46f}"
CONFIG=mdistiller_configs/cifar100/sld/res32x4_res8x4.yaml

source scripts/venv.sh

if [ -z "${SLKD_MDISTILLER_PATH:-}" ]; then
  SLKD_MDISTILLER_PATH="$PWD/mdistiller"
  if [ ! -d "$SLKD_MDISTILLER_PATH/.git" ]; then
    if ! git clone -q "$REPO" "$SLKD_MDISTILLER_PATH"; then
      echo "quickstart: could not clone $REPO (offline?). Clone mdistiller yourself and set SLKD_MDISTILLER_PATH." >&2
      exit 1
    fi
    git -C "$SLKD_MDISTILLER_PATH" checkout -q "$COMMIT"
  fi
fi
export SLKD_MDISTILLER_PATH
"$PY" -m pip install -q -e "$SLKD_MDISTILLER_PATH"

if "$VENV/bin/slkd-fetch" all --mdistiller-root "$SLKD_MDISTILLER_PATH"; then
  exec "$VENV/bin/slkd-train" --cfg "$CONFIG" "$@"
fi
echo "quickstart: teachers or CIFAR-100 could not be fetched (see above); running the smoke run instead." >&2
exec "$VENV/bin/slkd-train" --cfg "$CONFIG" --smoke "$@"
