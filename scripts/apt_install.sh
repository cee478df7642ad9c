#!/usr/bin/env bash
# Installs Debian packages with apt-get, as root or through sudo; exits 2 naming what is missing
# when neither (or apt-get) is available. Used by test.sh (chromium) and bazel_test.sh (Bazel).
#
#   bash scripts/apt_install.sh PACKAGE...
set -euo pipefail
if [ "$#" = 0 ]; then
  echo "usage: bash scripts/apt_install.sh PACKAGE..." >&2
  exit 2
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "[apt_install] installing $* needs root (or sudo)" >&2; exit 2
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[apt_install] apt-get is not available to install $*" >&2; exit 2
fi
echo "[apt_install] apt-get install $*"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  -o DPkg::Lock::Timeout=300 "$@"
