#!/usr/bin/env bash
# The test command (README, .ci/run): set the machine up, then run every test.
# Lab tests need root + CAP_NET_ADMIN; with CI=true a lab that cannot start fails the run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/bootstrap.sh"
cd "$repo"
exec .venv/bin/python -m pytest -ra "$@"
