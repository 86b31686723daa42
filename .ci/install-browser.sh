#!/usr/bin/env bash
# Installs what tests/test_web_e2e.py needs: Debian's chromium (a test tool's own browser download
# fails on these machines) and Playwright for Python (its driver ships in the wheel; we never run
# `playwright install`). Idempotent and quick when everything is already there.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if ! python3 -c "import playwright.sync_api" >/dev/null 2>&1; then
    python3 -m pip install -q "playwright>=1.40"
fi

chromium --version || true
python3 -c "import playwright, importlib.metadata as m; print('playwright', m.version('playwright'))"
