#!/usr/bin/env bash
# README's test command: set up the virtualenv, run the pytest suite, then `bazel test //...`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
venv="${LATEINT_VENV:-$repo/.venv}"
"$venv/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" tests "$@"
if [ -x scripts/bazel_test.sh ] && [ "${LATEINT_SKIP_BAZEL:-0}" != 1 ]; then
  bash scripts/bazel_test.sh
fi
