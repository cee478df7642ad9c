#!/usr/bin/env bash
# Runs `bazel test //...` offline with Debian's bazel-bootstrap (Bazel 4.2.3) against the project
# virtualenv (scripts/setup.sh), and exits with Bazel's exit code.
#
#   bash scripts/bazel_test.sh [bazel test flags] [targets; default //...]
#   e.g. bash scripts/bazel_test.sh --test_filter=parity //tests:test_pretrained
#
# - Installs bazel-bootstrap with apt-get when no Bazel is on PATH (scripts/apt_install.sh:
#   root or sudo).
# - The virtualenv interpreter is found by Bazel itself (third_party/bazel/python/venv.bzl):
#   $LATEINT_VENV if set, else <repo>/.venv; nothing machine-specific is written into the tree.
# - Bazel's output lives in $LATEINT_BAZEL_ROOT (default ~/.cache/lateint-bazel, or
#   /tmp/lateint-bazel-$UID when $HOME is not writable), outside the checkout.
# - Fails (exit 1, before Bazel runs) when a BUILD file is out of date with the .py files;
#   regenerate with `python third_party/bazel/gen_build.py`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${LATEINT_VENV:-$repo/.venv}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[bazel_test] no virtualenv interpreter at $venv/bin/python: run scripts/setup.sh first" >&2
  exit 2
fi

# Bazel: $BAZEL, else Debian's versioned bazel-4, else any bazel, else install bazel-bootstrap.
bazel="${BAZEL:-}"
if [ -z "$bazel" ]; then
  if command -v bazel-4 >/dev/null 2>&1; then
    bazel=bazel-4
  elif command -v bazel >/dev/null 2>&1; then
    bazel=bazel
  else
    echo "[bazel_test] installing Debian's bazel-bootstrap (Bazel 4.2.3)"
    bash scripts/apt_install.sh bazel-bootstrap
    bazel=bazel-4
    command -v "$bazel" >/dev/null 2>&1 || bazel=bazel
  fi
fi

# Output root outside the checkout, writable on a fresh CI machine.
root="${LATEINT_BAZEL_ROOT:-}"
if [ -z "$root" ]; then
  cache="${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}"
  if mkdir -p "$cache/lateint-bazel" 2>/dev/null && [ -w "$cache/lateint-bazel" ]; then
    root="$cache/lateint-bazel"
  else
    root="${TMPDIR:-/tmp}/lateint-bazel-$(id -u)"
  fi
fi
mkdir -p "$root"

# Changes whenever a distribution is installed, removed or upgraded in the virtualenv (its
# *.dist-info folder names carry the versions); Bazel then re-reads the package list, which is
# an input of every test (third_party/bazel/python/venv.bzl), so no stale cached result is reused.
LATEINT_VENV_STAMP="$(ls -d "$venv"/lib/python3*/site-packages/*.dist-info 2>/dev/null \
  | cksum | cut -d' ' -f1)"
export LATEINT_VENV_STAMP

# BUILD files are generated from the sources; a stale one silently misses a test or a dep.
if ! "$venv/bin/python" third_party/bazel/gen_build.py --check; then
  echo "[bazel_test] BUILD files are stale (see above): run" \
    "python third_party/bazel/gen_build.py and commit them" >&2
  exit 1
fi

echo "[bazel_test] $(command -v "$bazel") ($("$bazel" --version 2>/dev/null || true))" \
  "output_user_root=$root venv=$venv"
# Arguments that are not flags replace //... as the targets: `bazel_test.sh //tests:test_model`.
targets=("//...")
for arg in "$@"; do
  case "$arg" in -*) ;; *) targets=() ;; esac
done
start=$SECONDS
set +e
# The server stays up 10 minutes after the last command (warm re-runs), then exits by itself.
"$bazel" --output_user_root="$root" --max_idle_secs=600 \
  test --test_output=errors "${targets[@]}" "$@"
rc=$?
set -e
echo "[bazel_test] bazel test exited with $rc after $((SECONDS - start)) s"
exit "$rc"
