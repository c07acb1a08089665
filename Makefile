# Two entry points that work on a fresh machine with only Python and pip:
#   make train   # train + evaluate the default configuration on the built-in dataset
#   make test    # the test suite
# Both install uv (if missing) and the locked environment (uv.lock) first.

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
RUN := $(UV) run --frozen
# pytest workers for `make test` (pytest-xdist; each runs one compute thread, tests/conftest.py)
JOBS ?= 2

.PHONY: setup train test test-all lint format clean

$(UV):
	$(PYTHON) -m pip install --user --quiet uv || \
		$(PYTHON) -m pip install --user --quiet --break-system-packages uv

setup: $(UV)
	$(UV) sync --frozen --compile-bytecode

train: setup
	$(RUN) python train.py $(ARGS)

test: setup
	$(RUN) pytest -q -n $(JOBS) --dist loadgroup -m "not slow" $(ARGS)

test-all: setup
	$(RUN) pytest -q $(ARGS)

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: setup
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

clean:
	rm -rf outputs multirun .pytest_cache
