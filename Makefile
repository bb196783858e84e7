# Entry points: `make setup`, `make demo` (set up, then a CPU-scale reproduction of Lance & Kieu's
# CIFAR-10 table, offline), `make test` (what CI's .ci/run calls) and `make docs`.
# Each creates or refreshes .venv itself; all it needs is a Python 3.11: python3.11, or python3
# if that is 3.11, or the one named by `make PYTHON=/path/to/python3.11`.
PY311 := import sys; sys.exit(sys.version_info[:2] != (3, 11))
PYTHON ?= $(shell command -v python3.11 2>/dev/null || { python3 -c '$(PY311)' 2>/dev/null && command -v python3; })
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MKDOCS := NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs

.PHONY: setup demo test docs lint clean

$(STAMP): pyproject.toml
	@if [ -x $(PY) ] && ! $(PY) -c '$(PY311)'; then echo "$(VENV) is not Python 3.11: making it again"; rm -rf $(VENV); fi
	@test -x $(PY) || { [ -n "$(PYTHON)" ] && "$(PYTHON)" -c '$(PY311)' 2>/dev/null; } || { echo "fabench needs Python 3.11: install python3.11 (e.g. apt install python3.11-venv, brew install python@3.11, pyenv install 3.11) or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || "$(PYTHON)" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m fabench grid repro-cifar --seed 0 --workers 2 --no-progress
	$(PY) -m fabench table --task repro-cifar --compare published

test: $(STAMP)
	$(PY) -m ruff check fabench tests examples
	$(VENV)/bin/lint-imports
	$(MKDOCS) build --strict --quiet
	$(PY) -m pytest -q

docs: $(STAMP)
	$(MKDOCS) build --strict

lint: $(STAMP)
	$(PY) -m ruff check fabench tests examples
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build site *.egg-info
