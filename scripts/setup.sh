#!/usr/bin/env bash
# Idempotent set-up for relmon on a Debian machine: the virtualenv with torch, relmon and its test
# extras, and the Debian packages the demo and the tests use. Re-running it does nothing that is
# already done. Environment: VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_PINS=${TORCH_PINS:-"torch==2.14.1 torchvision==0.29.1"}

log() { printf '[setup] %s\n' "$*"; }

# Debian packages: the Fashion-MNIST data set and the Prometheus servers the integration tests start.
missing=()
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/prometheus-pushgateway ] || missing+=(prometheus-pushgateway)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # test certificates (tests/test_export_security.py)
# headless Chromium for the HTML report's browser test (tests/test_report.py)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "WARNING: missing Debian packages ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]});"
    log "         the demo falls back to the shipped sample; tests that need them will fail"
  fi
fi

# Virtualenv with torch first (the pinned build installs from the local disk on the dev machines).
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.relmon-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $TORCH_PINS 2>&1 | grep -v "^WARNING: Location" || true
  fi
  "$VENV/bin/python" -m pip install -q -e ".[dev,oracle,all]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import relmon, torch, zennit; print('[setup] relmon', relmon.__version__, 'torch', torch.__version__, 'zennit', zennit.__version__ if hasattr(zennit, '__version__') else '')"
  echo "$want" > "$stamp"
else
  log "virtualenv $VENV is up to date"
fi
