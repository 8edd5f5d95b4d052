# The two commands of the README: `make demo` and `make test`. Each sets up what is missing
# first: Debian packages (ffmpeg, espeak-ng), the virtual environment .venv, the Python packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.minmo-installed
BUILD ?= build/demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := ffmpeg espeak-ng
# The tests also open the stats report in a headless browser.
TEST_DEBIAN_PACKAGES := chromium chromium-driver

.PHONY: demo test lint setup system-packages test-system-packages bench clean

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
	$(call apt_install_missing,$(DEBIAN_PACKAGES))

test-system-packages:
	$(call apt_install_missing,$(TEST_DEBIAN_PACKAGES))

$(STAMP): pyproject.toml | system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf build .pytest_cache
