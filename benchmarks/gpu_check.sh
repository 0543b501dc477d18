#!/usr/bin/env bash
# Every GPU test and benchmark of relmon, in one run of under 8 minutes (timeouts: 120 + 210 + 120 s), printing the figures.
# Without a CUDA device it says so and exits 0. On the lent GPU machines (torch preinstalled, no
# internet) zennit travels as a wheel in .whl/ (see benchmarks/RESULTS.md for the command).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/relmon-site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/relmon-site"
fi
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device here; skipping the GPU tests and benchmarks"
  exit 0
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, zennit; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
status=0
echo "== GPU tests (pytest -m gpu)"
timeout 120 $PY -m pytest -q -m gpu -p no:cacheprovider tests || status=1
echo "== perturbation benchmark on CUDA (ResNet-50, 224x224, region 9, 100 steps; relmon vs Quantus when installed)"
timeout 210 $PY benchmarks/bench_perturbation.py --device cuda --repeats 2 || status=1
echo "== Lightning: RelevanceMonitor predict throughput and validation-callback overhead on CUDA"
timeout 120 $PY benchmarks/bench_lightning.py --accelerator gpu --n 1024 --val-n 256 || status=1
exit $status
