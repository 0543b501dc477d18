# The two quick-start commands. Both set up what they need first (idempotent).
VENV ?= .venv
OUT ?= out/demo
CALIBRATION ?= out/calibration
RELMON = $(VENV)/bin/relmon

.PHONY: setup demo test lint
setup:
	@bash scripts/setup.sh

# The main job on the embedded default, the same steps as `relmon demo` without make: calibrate once on
# the labelled shipped sample (cached in $(CALIBRATION)), monitor one unlabelled, noise-shifted window
# and export its metrics; then the heatmap grid of every method.
demo: setup
	$(RELMON) demo --out $(OUT) --calibration $(CALIBRATION) --calibration-n 80 --n 128

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
