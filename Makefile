# triplet-tools: `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
DOCTESTS := --doctest-modules src/triplet_tools --ignore=src/triplet_tools/legacy.py
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONUNBUFFERED := 1

.PHONY: test test-tensorflow test-jax test-torch test-legacy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Every backend, the legacy tf_keras leg and the test tools (torch pinned: see pyproject.toml).
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install -q --disable-pip-version-check -e ".[tensorflow,jax,torch,legacy,test]"
	touch $@

# The suite once per Keras backend, each in its own process, then the tf_keras leg.
test: $(VENV)/.installed-test
	$(MAKE) --no-print-directory test-tensorflow test-jax test-torch test-legacy

test-tensorflow test-jax test-torch: test-%: $(VENV)/.installed-test
	@echo "=== KERAS_BACKEND=$*"
	KERAS_BACKEND=$* $(PYTEST) tests --ignore=tests/legacy $(DOCTESTS)

test-legacy: $(VENV)/.installed-test
	@echo "=== tf_keras (TF_USE_LEGACY_KERAS=1)"
	TF_USE_LEGACY_KERAS=1 KERAS_BACKEND=tensorflow $(PYTEST) tests/legacy \
		--doctest-modules src/triplet_tools/legacy.py

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
