#!/usr/bin/env bash
# The headless browser of the report tests on Ubuntu (22.04, 24.04): Google Chrome's .deb and the
# chromedriver of the same version, from Chrome for Testing.
#
# Why not `apt-get install chromium chromium-driver` as on Debian: on Ubuntu those are transition
# packages that install the chromium snap, and snapd does not run in containers (nor in most CI
# images). Google's .deb is a plain package (apt resolves its libraries) and adds Google's apt
# repository, so Chrome is updated with the system; this script then fetches the chromedriver
# matching the installed Chrome again whenever their versions part. amd64 only: Google ships no
# Linux Chrome for arm64.
#
# Does nothing when `google-chrome` and a chromedriver of the same version are on PATH; sudo is
# used only when not root and something has to be installed. Run by `make test`
# (test-system-packages) on Ubuntu.
set -euo pipefail

CHROME_DEB_URL=https://dl.google.com/linux/direct/google-chrome-stable_current_amd64.deb
DRIVER_URL=https://storage.googleapis.com/chrome-for-testing-public # /<version>/linux64/...
DRIVER_DEST=/usr/local/bin/chromedriver
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

version_of() { "$1" --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+){3}' | head -n1; }

if [ "$(dpkg --print-architecture)" != amd64 ]; then
  echo "tools/ubuntu-chrome.sh: Google Chrome has no Linux build for $(dpkg --print-architecture);" \
    "install chromium and chromedriver yourself (the report tests find them on PATH)" >&2
  exit 1
fi

chrome=$(version_of google-chrome || true)
driver=$(version_of chromedriver || true)
if [ -n "$chrome" ] && [ "$driver" = "$chrome" ]; then
  exit 0
fi

if ! command -v curl >/dev/null || ! command -v unzip >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ca-certificates curl unzip
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ -z "$chrome" ]; then
  echo "installing Google Chrome (the .deb from Google: Ubuntu's chromium is a snap)"
  curl -fsSL -o "$tmp/chrome.deb" "$CHROME_DEB_URL"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$tmp/chrome.deb"
  chrome=$(version_of google-chrome)
fi

if [ "$driver" != "$chrome" ]; then
  echo "installing chromedriver $chrome (Chrome for Testing) as $DRIVER_DEST"
  curl -fsSL -o "$tmp/driver.zip" "$DRIVER_URL/$chrome/linux64/chromedriver-linux64.zip"
  unzip -q "$tmp/driver.zip" -d "$tmp"
  $SUDO install -m 0755 "$tmp/chromedriver-linux64/chromedriver" "$DRIVER_DEST"
fi
