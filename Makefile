# monai-simsid: `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e .[dev]
	touch $(STAMP)

test: install
	OMP_NUM_THREADS=2 $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info
