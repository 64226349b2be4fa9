# triplet-tools: `make test` and `make bench` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
# The library's doctests run on every backend; the demo's and the benchmark's once (test-tools).
DOCTESTS := --doctest-modules src/triplet_tools --ignore=src/triplet_tools/legacy.py \
	--ignore=src/triplet_tools/demo
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONUNBUFFERED := 1

# The demo's backend: JAX trained the demo fastest on a 2-core CPU (see README) and installs
# quickest. Override with `make demo DEMO_BACKEND=torch`; pass options with DEMO_ARGS="--loss hard".
DEMO_BACKEND ?= jax
DEMO_ARGS ?=

.PHONY: demo lint test test-tensorflow test-jax test-torch test-legacy test-tools bench bench-peers bench-quality bench-ab docs docs-serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Every backend, the legacy tf_keras leg and the test tools (torch pinned: see pyproject.toml).
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install -q --disable-pip-version-check -e ".[tensorflow,jax,torch,legacy,test]"
	touch $@

# Only what the demo needs: the package, one backend, scikit-learn and matplotlib. Its own
# stamp, so a later `make test` still installs everything the tests need.
$(VENV)/.installed-demo-$(DEMO_BACKEND): pyproject.toml | $(BIN)/python
	$(PIP) install -q --disable-pip-version-check -e ".[$(DEMO_BACKEND),demo]"
	touch $@

demo: $(VENV)/.installed-demo-$(DEMO_BACKEND)
	KERAS_BACKEND=$(DEMO_BACKEND) $(BIN)/triplet-tools demo $(DEMO_ARGS)

# ruff and mypy (the lint extra) with the package, its own stamp like the demo's.
$(VENV)/.installed-lint: pyproject.toml | $(BIN)/python
	$(PIP) install -q --disable-pip-version-check -e ".[lint]"
	touch $@

# Lint, format and type check (settings in pyproject.toml); all three run, then any failure
# fails the target. `ruff format .` and `ruff check --fix .` apply what the first two report.
lint: $(VENV)/.installed-lint
	@status=0; \
	echo "=== ruff check"; $(BIN)/ruff check . || status=1; \
	echo "=== ruff format --check"; $(BIN)/ruff format --check . || status=1; \
	echo "=== mypy"; $(BIN)/mypy || status=1; \
	exit $$status

# The suite once per Keras backend, each in its own process, the tf_keras leg, and the tools
# (the demo's doctests and the benchmark harness), which run once. TEST_JOBS legs at a time,
# longest first, each leg's output printed whole when it ends: the legs mostly use one core,
# and two at a time took 12 min against 17 min one after the other on 2 cores (2026-12-06).
TEST_JOBS ?= 2
test: $(VENV)/.installed-test
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target \
		test-jax test-tensorflow test-torch test-legacy test-tools

test-tensorflow test-jax test-torch: test-%: $(VENV)/.installed-test
	@echo "=== KERAS_BACKEND=$*"
	KERAS_BACKEND=$* $(PYTEST) tests --ignore=tests/legacy --ignore=tests/test_docs.py $(DOCTESTS)

test-legacy: $(VENV)/.installed-test
	@echo "=== tf_keras (TF_USE_LEGACY_KERAS=1)"
	TF_USE_LEGACY_KERAS=1 KERAS_BACKEND=tensorflow $(PYTEST) tests/legacy \
		--doctest-modules src/triplet_tools/legacy.py

# The documentation's examples run here, once: tests/test_docs.py (a page about another
# backend starts its own process).
test-tools: $(VENV)/.installed-test
	@echo "=== tools: demo doctests, the benchmark harness and the docs examples (KERAS_BACKEND=jax)"
	KERAS_BACKEND=jax $(PYTEST) bench --doctest-modules src/triplet_tools/demo bench \
		tests/test_docs.py --durations=5

# --- make docs: the site (mkdocs-material + mkdocstrings) into site/ --------------------------
# --strict: a broken link, a missing reference or a docstring that does not render fails it.
$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(PIP) install -q --disable-pip-version-check -e ".[docs]"
	touch $@

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# --- make bench: ours on every backend against the peers ------------------------------------
# Peers live in their own environments, one per bench/peers/<name>.txt, under $(BENCH_DIR).
# `make bench SIZES=256,1024` for a short run; BENCH_ARGS passes any other option
# (`.venv/bin/python bench/benchmark.py -h`), e.g. BENCH_ARGS="--no-peers --backends jax".
BENCH_DIR ?= .bench
SIZES ?=
BENCH_ARGS ?=
PEER_NAMES := $(basename $(notdir $(filter-out %/constraints.txt,$(wildcard bench/peers/*.txt))))
PEER_STAMPS := $(PEER_NAMES:%=$(BENCH_DIR)/%/.installed)

bench: $(VENV)/.installed-test $(PEER_STAMPS)
	$(BIN)/python bench/benchmark.py --peers-dir $(BENCH_DIR) $(if $(SIZES),--sizes $(SIZES)) $(BENCH_ARGS)
	$(BIN)/python bench/index_bench.py --tfsim-python $(BENCH_DIR)/tf-similarity-0.17.1/bin/python
	$(if $(filter 1,$(QUALITY)),$(MAKE) --no-print-directory bench-quality)

# The optional quality section: batch-hard against triplet-tools 0.2.3 on Omniglot, paired seeds
# (bench/quality_omniglot.py, docs/performance.md). It skips, exit 0, without
# ../shared/data/omniglot-background; about 20 min on 2 cores. QUALITY=0 leaves it out of
# `make bench`; QUALITY_ARGS passes options (QUALITY_ARGS="--seeds 2 --epochs 3").
QUALITY ?= 1
QUALITY_ARGS ?=
bench-quality: $(VENV)/.installed-test $(BENCH_DIR)/triplet-tools-0.2.3/.installed
	KERAS_BACKEND=tensorflow $(BIN)/python bench/quality_omniglot.py \
		--peer $(BENCH_DIR)/triplet-tools-0.2.3 --out bench-output/quality.json $(QUALITY_ARGS)

bench-verification: $(VENV)/.installed-test  # verification / re-ID: ours against pdist + sklearn
	$(BIN)/python bench/verification_bench.py --out bench-output/verification $(BENCH_ARGS)

bench-peers: $(PEER_STAMPS)

# --- make bench-ab: this checkout's losses against another's, alternating (issue 26) ---------
# bench/ab_engine.py: loss + gradient at B = 512 and 4096 on TF (XLA), JAX and eager torch,
# old and new each in fresh processes, round after round. AB_OLD: the old checkout (or its
# src/); by default a detached git worktree of AB_REF, made on first use (remove it to
# refresh). AB_ARGS passes options, e.g. AB_ARGS="--quick --backends jax", "--memory"
# (B = 65,536 peak RSS), "--autodiff" (closed form against autodiff); see its -h.
AB_REF ?= main
AB_OLD ?= $(BENCH_DIR)/ab-old
AB_ARGS ?=
bench-ab: $(VENV)/.installed-test $(AB_OLD)
	$(BIN)/python bench/ab_engine.py --old $(AB_OLD) --new src --out bench-output/ab $(AB_ARGS)

$(BENCH_DIR)/ab-old:
	git worktree prune
	git worktree add --detach $@ $(AB_REF)

# From scratch each time, so a half-finished install is never reused; the stamp comes last.
# A peer whose frameworks differ from the shared pins (tensorflow-addons: TF 2.15) has its own
# bench/peers/<name>.constraints, used instead of constraints.txt.
peer_constraints = $(firstword $(wildcard bench/peers/$(1).constraints) bench/peers/constraints.txt)
.SECONDEXPANSION:
$(BENCH_DIR)/%/.installed: bench/peers/%.txt $$(call peer_constraints,$$*)
	@echo "=== peer environment $(@D)"
	rm -rf $(@D)
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/python -m pip install -q --disable-pip-version-check \
		-c $(call peer_constraints,$*) -r $<
	touch $@

clean:
	rm -rf $(VENV) $(BENCH_DIR) bench-output .pytest_cache .ruff_cache .mypy_cache build dist site \
		src/*.egg-info
