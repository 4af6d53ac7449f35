# The course's commands. `make run` and `make test` set up .venv on first use,
# and again whenever pyproject.toml changes.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

# Tests and nbval: one torch thread and the quick schedule, so stored outputs reproduce.
TEST_ENV := DETUTILS_SCHEDULE=ci DETUTILS_NUM_THREADS=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg

.PHONY: setup run test lint unit nbval lab refresh exercises clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m detutils.course run

test: $(STAMP)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory lint unit nbval && \
	echo "make test passed in $$(( $$(date +%s) - start )) s"

lint: $(STAMP)
	$(BIN)/ruff check detutils tests benchmarks notebooks
	$(BIN)/ruff format --check detutils tests benchmarks notebooks/*.py

unit: $(STAMP)
	$(TEST_ENV) $(BIN)/pytest -q tests

nbval: $(STAMP)
	$(TEST_ENV) $(BIN)/pytest -q --nbval --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg $(NOTEBOOKS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

# Re-execute the notebooks and store their outputs (NB=notebooks/01_boxes_and_iou.py for one).
refresh: $(STAMP)
	$(BIN)/python -m detutils.course refresh $(NB)
	$(BIN)/python -m detutils.course exercises

exercises: $(STAMP)
	$(BIN)/python -m detutils.course exercises

clean:
	rm -rf build runs
