# Two commands a new user needs: `make demo` (the phantom pipeline end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv test clean-venv

# (Re)create the virtual environment when requirements.txt changes.
$(VENV)/.stamp: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.stamp

test: venv
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
