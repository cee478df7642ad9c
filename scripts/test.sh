#!/usr/bin/env bash
# README's test command: set up the virtualenv, run the pytest suite, then `bazel test //...`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
# The demo-page test loads the page in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing chromium for the demo-page test"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "[test] WARNING: chromium missing and not installable here; the demo-page test skips"
  fi
fi
venv="${LATEINT_VENV:-$repo/.venv}"
"$venv/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" tests "$@"
if [ -x scripts/bazel_test.sh ] && [ "${LATEINT_SKIP_BAZEL:-0}" != 1 ]; then
  bash scripts/bazel_test.sh
fi
