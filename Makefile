# The two quick-start commands. Both set up what they need first (idempotent).
VENV ?= .venv
OUT ?= out/demo

.PHONY: setup demo test lint
setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/relmon demo --out $(OUT)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
