# The two quick-start commands. Both set up what they need first (idempotent).
VENV ?= .venv
OUT ?= out/demo
CALIBRATION ?= out/calibration
RELMON = $(VENV)/bin/relmon

.PHONY: setup demo test lint
setup:
	@bash scripts/setup.sh

# The main job on the embedded default: calibrate once on the labelled shipped sample (cached in
# $(CALIBRATION)), then monitor one unlabelled, noise-shifted window and export its metrics; and the
# heatmap grid of every method.
demo: setup
	@test -f $(CALIBRATION)/calibration.json || $(RELMON) calibrate --out $(CALIBRATION) --calibration-n 80
	$(RELMON) monitor --config deploy/relmon.example.yaml --calibration $(CALIBRATION) \
		--textfile $(OUT)/relmon.prom --records $(OUT)/records
	$(RELMON) demo --n 128 --out $(OUT)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
