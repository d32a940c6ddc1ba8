# Two commands a new user needs: `make demo` (the phantom pipeline end to end) and `make test`;
# `make lint` checks the code style (ruff, configured in pyproject.toml).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

DEMO_SCALE ?= full

.PHONY: venv test lint demo clean-venv

# (Re)create the virtual environment when requirements.txt changes.
$(VENV)/.stamp: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.stamp

test: venv
	$(PY) -m pytest -q tests

lint: venv
	$(PY) -m ruff check .

# The phantom pipeline end to end: data -> preprocessing -> training -> zero-shot AUROC.
# DEMO_SCALE=smoke runs the same sequence on a tiny set; DEMO_ARGS=--force rebuilds everything.
demo: venv
	$(PY) demo.py --scale $(DEMO_SCALE) $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
