# kinko — quick start: `make run` (serve the embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export KINKO_HOME ?= $(CURDIR)/instance

.PHONY: run test unit functional functional-scale lint typecheck catalog extract system-deps bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

# Compiled catalogues are build products (not committed).
catalog: $(STAMP)
	$(BIN)/pybabel compile -d portal/translations -D messages

extract: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k _l -k N_ -o portal/translations/messages.pot .
	$(BIN)/pybabel update -i portal/translations/messages.pot -d portal/translations -D messages

run: system-deps $(STAMP) catalog
	$(BIN)/kinko init
	$(BIN)/kinko demo > /dev/null
	$(BIN)/kinko serve

lint: $(STAMP)
	$(BIN)/ruff check portal storage scanners tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

# The whole suite on the embedded default, then the functional suite again on
# the scale-out profile: PostgreSQL + S3 (moto) + Redis, started by the tests.
test: system-deps $(STAMP) catalog lint typecheck
	$(BIN)/pytest
	KINKO_TEST_PROFILE=scale $(BIN)/pytest tests/functional

unit: $(STAMP) catalog
	$(BIN)/pytest tests/unit

functional: system-deps $(STAMP) catalog
	$(BIN)/pytest tests/functional

functional-scale: system-deps $(STAMP) catalog
	KINKO_TEST_PROFILE=scale $(BIN)/pytest tests/functional

# Benchmarks (docs/performance.md): ratios against references measured in the same run.
# Scale knobs: KINKO_BENCH_SIZE_MB, KINKO_BENCH_BIG_MB (1024 = the full run), ...
bench: system-deps $(STAMP) catalog
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
