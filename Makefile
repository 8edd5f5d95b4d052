# The two commands of the README: `make demo` and `make test`. Each sets up what is missing
# first: Debian packages, the virtual environment .venv, the Python packages (pinned by
# constraints.txt). Supported images: Debian 12 / 13, Ubuntu 22.04 / 24.04 (README, "Supported
# machines and crash testing").
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.minmo-installed
CONSTRAINTS := constraints.txt
BUILD ?= build/demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The distribution, from /etc/os-release: Ubuntu gets its browser for the tests another way.
OS_ID := $(shell . /etc/os-release 2>/dev/null && echo "$$ID")
# The set-up itself: `python3 -m venv` needs python3-venv (ensurepip); resemblyzer's webrtcvad
# builds from source, which needs a C compiler and the Python headers.
SETUP_DEBIAN_PACKAGES := python3-venv python3-dev build-essential
DEBIAN_PACKAGES := ffmpeg espeak-ng
# The tests also open the stats report in a headless browser. Ubuntu's chromium and
# chromium-driver are transition packages that install a snap, which does not run in
# containers: there, tools/ubuntu-chrome.sh installs Google Chrome's .deb and its chromedriver.
TEST_DEBIAN_PACKAGES := chromium chromium-driver

.PHONY: demo test lint setup system-packages test-system-packages bench clean constraints

demo: $(STAMP)
	$(BIN)/minmo run jobs/demo.yaml --build $(BUILD)
	@echo "demo done; the analysts' report: $(BUILD)/stats/report.html"

test: $(STAMP) test-system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q --durations=25

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

setup: $(STAMP)

# Installs the Debian packages named in $(1) that are not installed yet.
define apt_install_missing
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

system-packages:
	$(call apt_install_missing,$(SETUP_DEBIAN_PACKAGES) $(DEBIAN_PACKAGES))

test-system-packages:
ifeq ($(OS_ID),ubuntu)
	tools/ubuntu-chrome.sh
else
	$(call apt_install_missing,$(TEST_DEBIAN_PACKAGES))
endif

$(STAMP): pyproject.toml $(CONSTRAINTS) | system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

# Refreshes constraints.txt: resolves pyproject.toml's dependencies anew (each at its newest
# allowed version) in a throwaway venv and pins exactly what it got, for this Python version;
# the pins of other Python versions are kept. Run `make test` with the result before committing.
CONSTRAINTS_VENV := build/constraints-venv
constraints: | system-packages
	rm -rf $(CONSTRAINTS_VENV)
	$(PYTHON) -m venv $(CONSTRAINTS_VENV)
	$(CONSTRAINTS_VENV)/bin/pip install -q --upgrade pip
	$(CONSTRAINTS_VENV)/bin/pip install -q -e '.[dev]'
	$(CONSTRAINTS_VENV)/bin/python tools/pin_constraints.py $(CONSTRAINTS)
	rm -rf $(CONSTRAINTS_VENV)

clean:
	rm -rf build .pytest_cache
