# Two entry points that each do all the set-up on a fresh machine, then run.
#   make test   lint and the test suite
#   make demo   the main job on the embedded default model
# Re-running is fast: the venv is rebuilt only when pyproject.toml changes.

VENV       ?= .venv
PY         := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP      := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: a looser spec would pull GBs of CUDA wheels.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(VENV)/bin/pytest

demo: install
	bash examples/demo.sh

bench: install
	$(PY) benchmarks/tofu.py

clean:
	rm -rf $(VENV) .forgetctl .pytest_cache .ruff_cache
