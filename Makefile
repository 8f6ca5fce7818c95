# The two commands a newcomer needs: `make run` and `make test`. Both install everything
# they need themselves (Debian font, virtual environment, pip packages).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUNS ?= runs

.PHONY: install run test bench clean

$(INSTALLED): pyproject.toml
	@fc-list 2>/dev/null | grep -qi wqy || ( $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends fonts-wqy-microhei fontconfig )
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, so no dependency pulls in a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(INSTALLED)

# Until the serving issue lands, the main job is the compression demo end to end:
# data -> teacher -> AntGMM compression -> report.
run: install
	$(BIN)/adaudit data make --out $(RUNS)/demo-data --n 1500 --seed 0 > /dev/null
	$(BIN)/adaudit teacher train --data $(RUNS)/demo-data --out $(RUNS)/demo-teacher --preset tiny --epochs 12
	$(BIN)/adaudit compress --teacher $(RUNS)/demo-teacher --data $(RUNS)/demo-data \
	  --out $(RUNS)/demo-student --recipe compression/recipes/tiny.yaml
	$(BIN)/adaudit eval --model $(RUNS)/demo-student --data $(RUNS)/demo-data
	@echo "student and report.json in $(RUNS)/demo-student"

test: install
	$(BIN)/python -m pytest -q

# The benchmark teacher and the default recipe, as committed in benchmarks/results/.
bench: install
	benchmarks/compression.sh

clean:
	rm -rf $(RUNS) .pytest_cache
