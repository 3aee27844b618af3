# gossiplearn developer targets. Two commands on a fresh machine: `make sim` and `make test`.
# Every target creates .venv if missing and installs what it needs, system packages included.

PYTHON     ?= python3
VENV       ?= .venv
# Installed before the project so pip never resolves torch to a multi-GB CUDA build.
# Override elsewhere, e.g. `make test TORCH_SPEC="torch --index-url https://..."`.
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS  ?= --disable-pip-version-check --quiet

BIN := $(VENV)/bin
PY  := $(BIN)/python

.PHONY: sim test bench lint sysdeps datasets clean

# libp2p's fastecdsa builds from source against GMP. Installed here when root with apt,
# otherwise we say exactly what is missing.
sysdeps:
	@if [ -e /usr/include/gmp.h ] || ls /usr/include/*/gmp.h >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing libgmp-dev (needed to build libp2p's fastecdsa)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgmp-dev; \
	else \
		echo "error: GMP headers missing; install libgmp-dev (Debian/Ubuntu) or gmp-devel, then rerun" >&2; exit 1; \
	fi

# Fashion-MNIST ships as a Debian package (no downloads at run time); the loader tests and the
# learning benchmark use it. Installed when root with apt; otherwise its tests are skipped.
datasets:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "note: dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)"; \
	fi

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip

$(VENV)/.torch: | $(BIN)/activate
	$(BIN)/pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch | sysdeps
	$(BIN)/pip install $(PIP_FLAGS) -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev]"
	@touch $@

sim: $(VENV)/.installed
	$(BIN)/gossiplearn sim --peers 4 --rounds 5 --mode process --out out/sim --overwrite

# Two workers: the live scenarios mostly wait on deadlines and sockets, so they overlap the
# short tests (tests/conftest.py starts them first). A module runs in one worker, so its
# module fixtures are built once. `make test TEST_WORKERS=0` runs the suite serially.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev datasets
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: $(VENV)/.installed-dev datasets
	$(PY) benchmarks/crypto_bench.py
	$(PY) benchmarks/round_bench.py --net memory
	$(PY) benchmarks/round_bench.py --net libp2p
	$(PY) benchmarks/compare_hivemind.py
	$(PY) benchmarks/idle_bench.py
	$(PY) benchmarks/learning_bench.py --dataset digits --peers 4,8 --rounds 5,20 --modes process,memory
	$(PY) benchmarks/learning_bench.py --dataset fashion-mnist --peers 10,50 --rounds 30
	$(PY) benchmarks/learning_bench.py --dataset fashion-mnist --peers 10 --rounds 30 --poison zero
	$(PY) benchmarks/learning_bench.py --dataset fashion-mnist --peers 10 --rounds 30 --poison zero --local-reference
	$(PY) benchmarks/scale_bench.py
	$(PY) benchmarks/fuzz_bench.py
	$(PY) benchmarks/hostile_bench.py
	$(PY) benchmarks/checkpoint_crash_bench.py
	$(PY) benchmarks/churn_bench.py
	$(PY) benchmarks/soak_bench.py
	$(PY) benchmarks/compare_flower.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check gossiplearn tests benchmarks
	$(BIN)/ruff format --check gossiplearn tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
