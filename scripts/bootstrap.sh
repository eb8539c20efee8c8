#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for ofactl (run as root): Debian packages for the lab and the
# config checkers, the agent runtime venv (.venv), and ofactl + the agent in it, editable.
# Idempotent: a second run installs nothing new.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
if [ "$(id -u)" != 0 ]; then
  echo "error: scripts/bootstrap.sh installs Debian packages and needs root" >&2
  echo "hint: sudo bash scripts/bootstrap.sh" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
pkgs=(openssh-server nginx keepalived systemd-container tini curl iproute2 prometheus procps
      psmisc ca-certificates)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # keep apt from starting nginx/keepalived/sshd/prometheus on this machine
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
echo "==> agent runtime (.venv)"
bash scripts/install-runtime.sh "$repo/.venv"
echo "==> ofactl and ofa_agent (editable)"
"$repo/.venv/bin/python" -m pip --disable-pip-version-check -q install -e ".[dev]" -e ./agent
echo "==> ready: $repo/.venv/bin/ofactl"
