#!/usr/bin/env bash
# README's test command (CI's .ci/run): set up the virtualenv, check the generated BUILD files
# and ruff (lint + format), run the whole pytest suite once, then the Bazel checks.
#
#   bash scripts/test.sh [pytest arguments]
#
# - pytest: $PYTEST_WORKERS workers (default 2), whole files per worker (`--dist loadfile`, so a
#   module's fixtures, e.g. a server, start once), the slowest files first (tests/conftest.py
#   SLOW_FILES_FIRST); the scenes corpus, tiny model and INDEX fixtures are built once and
#   shared through tests/fixture_cache.py; each process keeps JAX's compile cache (conftest).
# - Bazel (scripts/bazel_test.sh): `bazel build //...` (every target's declared deps resolve)
#   and the tests tagged `smoke` (`# bazel: tags=smoke` in the file) run from Bazel's runfiles.
#   LATEINT_SKIP_BAZEL=1 leaves Bazel out.
# - The demo-page test needs Debian's chromium: installed here when missing (root or sudo), and
#   LATEINT_REQUIRE_CHROMIUM=1 makes its absence a failure instead of a skip (set it to 0 to allow
#   the skip on a machine where it cannot be installed).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
start=$SECONDS
bash scripts/setup.sh
venv="${LATEINT_VENV:-$repo/.venv}"

# A stale BUILD file silently misses a test or a dep: fail before anything long runs; so do
# lint errors and unformatted files (ruff, configured in pyproject.toml).
"$venv/bin/python" third_party/bazel/gen_build.py --check
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .

export LATEINT_REQUIRE_CHROMIUM="${LATEINT_REQUIRE_CHROMIUM:-1}"
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "[test] installing chromium for the demo-page test"
  bash scripts/apt_install.sh chromium || [ "$LATEINT_REQUIRE_CHROMIUM" = 0 ]
fi
echo "[test] setup took $((SECONDS - start)) s"

phase=$SECONDS
"$venv/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
  --durations=15 tests "$@"
echo "[test] pytest took $((SECONDS - phase)) s"

if [ "${LATEINT_SKIP_BAZEL:-0}" != 1 ]; then
  phase=$SECONDS
  bash scripts/bazel_test.sh --build_tests_only=false --test_tag_filters=smoke //...
  echo "[test] bazel took $((SECONDS - phase)) s"
fi
echo "[test] all checks passed in $((SECONDS - start)) s"
