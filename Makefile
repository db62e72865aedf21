# Two commands on a fresh machine (only python3 and pip needed):
#   make demo   - the main job: the embedded end-to-end SDDR demo (writes demo_out/)
#   make test   - the test suite (8 simulated CPU devices, 2 xdist workers)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIP_FLAGS ?= --disable-pip-version-check -q
# Optional extras that the full suite uses when they can be installed (reference tests against torch,
# transformers). Without them those tests skip cleanly.
OPTIONAL_EXTRAS ?= torch,transformers
DEMO_ARGS ?=

.PHONY: test test-fast demo venv install clean bench help

help:
	@echo "make demo   - run the embedded end-to-end demo (sddr-jax demo)"
	@echo "make test   - run the test suite"
	@echo "make bench  - run the CPU benchmarks (benchmarks/*.py)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) --upgrade pip setuptools wheel

# Re-install when pyproject.toml changes (stamp files), so repeated runs start at once.
$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PIP) install $(PIP_FLAGS) -e ".[test]"
	-$(PIP) install $(PIP_FLAGS) -e ".[$(OPTIONAL_EXTRAS)]" || echo "note: optional extras [$(OPTIONAL_EXTRAS)] unavailable; their tests will skip"
	touch $@

$(VENV)/.stamp-base: pyproject.toml | $(PY)
	$(PIP) install $(PIP_FLAGS) -e .
	touch $@

venv: $(VENV)/.stamp-base

test: $(VENV)/.stamp-test
	$(PY) -m pytest

test-fast: $(VENV)/.stamp-test
	$(PY) -m pytest -m "not slow"

demo: $(VENV)/.stamp-base
	$(VENV)/bin/sddr-jax demo $(DEMO_ARGS)

bench: $(VENV)/.stamp-base
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) demo_out .pytest_cache build *.egg-info
