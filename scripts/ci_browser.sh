#!/usr/bin/env bash
# Installs what the browser tests of the web demo need: Debian's chromium (driven by Playwright via
# executable_path; `playwright install` is never run) and the demo and browser extras.
# An apt failure only warns: tests/test_demo.py then skips with a message saying what is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium; } \
      >/dev/null 2>&1 || echo "warning: could not install chromium with apt-get; browser tests will skip"
  else
    echo "warning: no apt-get and no chromium; browser tests will skip"
  fi
fi
python -m pip install -q -e ".[demo,browser]"
