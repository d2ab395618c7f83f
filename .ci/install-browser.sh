#!/usr/bin/env bash
# Installs what the browser tests (tests/rewardmodels/feedback/test_webapp_browser.py, marker `browser`) need: Debian's Chromium
# at /usr/bin/chromium and the Playwright Python client (its driver ships in the wheel; we never run
# `playwright install`, whose browser download fails on closed networks). Idempotent and quiet: a no-op when both
# are present. Without them the browser tests skip with a message naming this script.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq chromium >/dev/null
fi

PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q "playwright>=1.40"
fi
