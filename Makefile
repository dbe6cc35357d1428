# `make test` and `make run` build .venv from nothing when it is missing (idempotent), then
# run the test suite / the main job on the default preset. Nothing is fetched at run time.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= default

.PHONY: test run clean

$(STAMP): requirements-cpu.txt requirements-nodeps.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-cpu.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --use-pep517 -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

run: $(STAMP)
	$(VENV)/bin/torchrun --nproc_per_node=1 -m isrt.run --preset $(PRESET) --output_dir runs/$(PRESET)

clean:
	rm -rf $(VENV) runs
