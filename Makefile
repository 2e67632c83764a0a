# Qiao: `make run` serves the API + web page on 127.0.0.1:8000; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DEPS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
CORE_STAMP := $(VENV)/.core-$(DEPS_HASH)
TEST_STAMP := $(VENV)/.test-$(DEPS_HASH)

.PHONY: run test lint install install-test index bench soak chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(CORE_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

# torch==2.13.0 is a CPU build that lies on this disk; a bare `torch` would pull a multi-GB CUDA build.
$(TEST_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[st,test,eval]'
	touch $@ $(CORE_STAMP)

install: $(CORE_STAMP)

install-test: $(TEST_STAMP)

index: install
	$(BIN)/qiao index --if-stale

run: index
	$(BIN)/qiao serve --host $(HOST) --port $(PORT)

# The browser test drives Debian's chromium; install it (and a CJK font for legible screenshots) when it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (apt)"; \
		if [ "$$(id -u)" = 0 ]; then APT=apt-get; else APT="sudo apt-get"; fi; \
		$$APT update -qq && DEBIAN_FRONTEND=noninteractive $$APT install -y -qq chromium fonts-wqy-microhei >/dev/null; }

# ruff over the whole tree; mypy over `qiao` and the layers below the front ends. mypy cannot follow
# the package-dir mapping (qiao.corpus -> corpus/), so it checks a tree of links laid out as the wheel is.
MYPY_LAYERS := corpus index retriever qa service
lint: install-test
	$(BIN)/ruff check .
	rm -rf build/mypy && mkdir -p build/mypy/qiao
	ln -s $(CURDIR)/qiao/*.py build/mypy/qiao/
	for d in $(MYPY_LAYERS); do ln -s $(CURDIR)/$$d build/mypy/qiao/$$d; done
	cd build/mypy && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache -p qiao

test: install-test chromium lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

bench: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m qiao.eval.bench
	@if [ -d ../shared/data/openqa-dev/corpus ]; then HF_HUB_OFFLINE=1 $(BIN)/python -m qiao.eval.bench_backends; \
	else echo "bench: ../shared/data/openqa-dev not here: Milvus / Ray figures (eval/BENCH_BACKENDS.md) skipped"; fi

soak: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m soak tests

clean:
	rm -rf .qiao
