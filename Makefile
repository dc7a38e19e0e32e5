# Two entry points for a fresh clone (see README): `make demo` and `make test`.
# `setup` creates .venv and installs the pinned stack once; it is a no-op when the pins have not changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PINS_HASH := $(shell cat requirements.txt constraints.txt pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(PINS_HASH)
PYTEST_ARGS ?=

.PHONY: setup demo test lint format clean-runs

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# constraints.txt pins torch to the 2.13.0 CPU wheel; nothing may upgrade it.
	$(PY) -m pip install --quiet -c constraints.txt -r requirements.txt
	$(PY) -m pip install --quiet -c constraints.txt --no-deps -e .
	$(PY) -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), f'torch {v} installed; expected 2.13.0 (CPU)'"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: setup
	$(VENV)/bin/srcompress run search_spaces/demo.yaml

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Two xdist workers, whole test modules each (`--dist loadfile`): most Ray tests wait on process start-up and
# polling, so two of them share 2 CPUs well (tests/conftest.py queues the Ray modules first).
test: lint
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
