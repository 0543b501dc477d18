#!/usr/bin/env bash
# Every GPU test and benchmark of relmon, in one run of under 8 minutes (timeouts 150 + 210 + 100 + 60 s,
# plus start-up), printing the figures; the JSON and the log land in ${OUT:-out}/gpu/.
#   bash benchmarks/gpu_check.sh            # on a CUDA machine (without one it says so and exits 0)
#   DEVICE=cpu bash benchmarks/gpu_check.sh # dry run: the same Python parts on the CPU at tiny sizes
# On the lent GPU machines (torch preinstalled, no internet) zennit and Quantus travel as wheels in
# .whl/ (see benchmarks/RESULTS.md for the command).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
DEVICE=${DEVICE:-cuda}
RESULTS=${OUT:-out}/gpu
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/relmon-site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/relmon-site"
fi
export PYTHONUNBUFFERED=1
# the files that hold tests marked gpu (collecting every test file would need the dev-only packages)
GPU_TESTS="tests/test_gpu.py tests/test_explain.py tests/test_lightning.py"
status=0
if [ "$DEVICE" = cpu ]; then
  echo "gpu_check: DRY RUN on the CPU (tiny sizes; the figures mean nothing)"
  $PY -c "import torch, zennit; print('torch', torch.__version__)" || status=1
  echo "== GPU tests: collected (they skip without CUDA)"
  timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider --collect-only $GPU_TESTS | tail -3 || status=1
  echo "== GPU tests run with the CPU standing in for the GPU"
  RELMON_GPU_TEST_DEVICE=cpu timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py | tail -3 || status=1
  echo "== perturbation benchmark code path (ResNet-18 at 32x32, 2 images, L=2; Quantus when installed)"
  timeout 240 $PY benchmarks/bench_perturbation.py --device cuda --dry-run --repeats 1 --json "$RESULTS/bench_dry.json" || status=1
  echo "== Lightning predict throughput code path"
  timeout 150 $PY benchmarks/bench_lightning.py --accelerator cpu --n 16 --val-n 16 --batch 8 --steps 4 --repeats 1 \
    --callback-val-n 64 --callback-models fmnist_cnn --error-n 16 --json "$RESULTS/bench_lightning_dry.json" || status=1
  exit $status
fi
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device here; skipping the GPU tests and benchmarks (DEVICE=cpu for a dry run)"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, zennit; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
$PY -c "import quantus; print('quantus', quantus.__version__)" || echo "quantus not importable: no Quantus comparison"
echo "== GPU tests (pytest -m gpu)"
timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider -rs --durations=5 $GPU_TESTS || status=1
echo "== perturbation benchmark on CUDA (ResNet-50, 224x224, region 9, 100 steps, bf16 + channels-last; relmon vs Quantus)"
timeout 210 $PY benchmarks/bench_perturbation.py --device cuda --repeats 2 --json "$RESULTS/bench_cuda.json" || status=1
echo "== Lightning: RelevanceMonitor predict throughput and validation-callback overhead on CUDA"
timeout 100 $PY benchmarks/bench_lightning.py --accelerator gpu --n 1024 --val-n 256 --steps 8 --repeats 2 \
  --callback-val-n 1000 --json "$RESULTS/bench_lightning.json" || status=1
echo "== the same predict throughput at 512 images per batch (per-batch Python work amortised)"
timeout 60 $PY benchmarks/bench_lightning.py --accelerator gpu --n 4096 --batch 512 --steps 8 --repeats 2 \
  --skip-callback --json "$RESULTS/bench_lightning_b512.json" || status=1
exit $status
