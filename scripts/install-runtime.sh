#!/usr/bin/env bash
# Install the agent's pinned runtime (torch + modelscope + the OFA import chain) into a venv.
#   scripts/install-runtime.sh [VENV]      (default: .venv next to this repo)
# Idempotent and fingerprinted: a venv whose runtime matches the pinned files is left alone.
# Built wheels (fairseq compiles ~140 s on 2 cores) land in pip's cache, so a rerun is quick.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$repo/.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
fp=$(cat "$repo"/agent/requirements-*.txt | sha256sum | cut -c1-16)
stamp="$venv/.ofa-runtime-$fp"
if [ -f "$stamp" ]; then echo "runtime $fp already installed in $venv"; exit 0; fi
t0=$(date +%s)
"${pip[@]}" install "setuptools>=68" wheel
"${pip[@]}" install -r "$repo/agent/requirements-torch.txt"
"${pip[@]}" install -r "$repo/agent/requirements-runtime.txt"
MAX_JOBS=2 "${pip[@]}" install --no-build-isolation -r "$repo/agent/requirements-fairseq.txt"
"${pip[@]}" check
rm -f "$venv"/.ofa-runtime-*
touch "$stamp"
echo "runtime $fp installed in $venv in $(( $(date +%s) - t0 )) s"
