# The only set-up a user needs on a fresh machine:
#   make demo   create .venv, install advseg, run the demo on built-in phantom data
#   make test   create .venv, install advseg with dev extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/pip
# The constraints file pins torch==2.13.0; without it monai drags in a newer torch and CUDA wheels.
PIP_INSTALL := $(PIP) install --quiet -c constraints.txt
DEMO_OUT ?= runs/demo

.PHONY: demo test lint docs install install-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(VENV)/bin/python
	$(PIP_INSTALL) -e .

install-dev: $(VENV)/bin/python
	$(PIP_INSTALL) -e ".[dev]"

demo: install
	$(VENV)/bin/advseg demo --out $(DEMO_OUT)

# pytest exits 5 when it collects no test; that is not a failure.
test: install-dev
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks

# The user documentation (docs/*.md) as a static site in site/; links are also checked by
# tests/test_docs.py, which needs no mkdocs.
docs: $(VENV)/bin/python
	$(PIP_INSTALL) -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache site
