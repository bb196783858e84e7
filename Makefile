# Two entry points: `make demo` (set up, then run the main job offline: a CPU-scale reproduction of
# Lance & Kieu's CIFAR-10 table) and `make test`.
# Both create or refresh .venv themselves; nothing needs to be installed beforehand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m fabench grid repro-cifar --seed 0 --workers 2 --no-progress
	$(PY) -m fabench table --task repro-cifar --compare published

test: $(STAMP)
	$(PY) -m ruff check fabench tests
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check fabench tests
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
