# The course's commands. `make run` and `make test` set up .venv on first use,
# and again whenever pyproject.toml changes.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

# Tests and nbval: one torch thread and the quick schedule, so stored outputs reproduce.
TEST_ENV := DETUTILS_SCHEDULE=ci DETUTILS_NUM_THREADS=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg

.PHONY: setup run site test lint unit nbval lab refresh exercises clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m detutils.course run

# The course's web site from the stored notebooks, in seconds: build/site/index.html.
site: $(STAMP)
	$(BIN)/python -m detutils.course site

test: $(STAMP)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory lint unit nbval && \
	echo "make test passed in $$(( $$(date +%s) - start )) s"

lint: $(STAMP)
	$(BIN)/ruff check detutils tests benchmarks notebooks
	$(BIN)/ruff format --check detutils tests benchmarks notebooks/*.py

unit: $(STAMP)
	$(TEST_ENV) $(BIN)/pytest -q tests

# Strict nbval twice: with this CPU's own kernels, then with others (PyTorch's generic
# kernels, oneDNN below AVX-512), so that no stored output depends on the last bits of
# float32 arithmetic, which differ from CPU to CPU.
NBVAL := $(BIN)/pytest -q --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg
OTHER_KERNELS := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2

nbval: $(STAMP)
	$(TEST_ENV) $(NBVAL) $(NOTEBOOKS)
	@echo "nbval again under other kernels: $(OTHER_KERNELS)"
	$(TEST_ENV) $(OTHER_KERNELS) $(NBVAL) $(NOTEBOOKS)

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
