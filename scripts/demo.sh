#!/usr/bin/env bash
# The main job (README): from a fresh Debian 12 machine to a serving, drilled fleet on this machine.
#   set up -> build the tiny model -> lab up (2 LBs + 4 nodes) -> deploy -> status ->
#   a prediction through the virtual IP -> a failover drill -> where to look next.
# Leaves the lab running so you can explore; `ofactl lab down` removes it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/bootstrap.sh
ofactl=("$repo/.venv/bin/ofactl")
work=${OFACTL_DEMO_DIR:-$repo/.ofactl/demo}
mkdir -p "$work"

step() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }

step "build the tiny random-weight OFA model through ModelScope's classes"
"${ofactl[@]}" model tiny --out "$work/model-tiny" --force

step "lab up: 2 load balancers + 4 nodes (private and public cloud) on this machine"
"${ofactl[@]}" lab up --nodes 4 --lbs 2 --model "$work/model-tiny"
inv=$("${ofactl[@]}" lab up --json | "$repo/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["inventory"])')
export OFACTL_INVENTORY="$inv"

step "inventory check"
"${ofactl[@]}" inventory check

step "deploy (first run: everything changes)"
"${ofactl[@]}" deploy --yes

step "deploy again (idempotent: nothing changes)"
"${ofactl[@]}" deploy --yes

step "status"
"${ofactl[@]}" status || true

step "a prediction through the virtual IP"
"$repo/.venv/bin/python" - "$work/example.png" <<'PY'
import sys
from PIL import Image, ImageDraw
img = Image.new("RGB", (320, 240), (200, 220, 255))
d = ImageDraw.Draw(img)
d.ellipse((100, 60, 220, 180), fill=(240, 160, 40))
img.save(sys.argv[1])
PY
vip=$("${ofactl[@]}" inventory show --json | "$repo/.venv/bin/python" -c '
import json,sys
inv = json.load(sys.stdin)
print(inv["lb_groups"][0]["vip"].split("/")[0])')
"${ofactl[@]}" predict --endpoint "http://$vip" "$work/example.png" "there is an orange ball"

step "failover drill: node, load balancer and cloud faults under load, with a budget"
"${ofactl[@]}" failover-test --scenario all --duration 15 --rate 4 --timeout 5 --yes \
  --report "$work/drill.json" || echo "(drill exceeded its budget: see the report)"

step "where to look next"
cat <<TXT
  inventory      $inv
  drill report   $work/drill.json (+ timeline picture beside it)
  fleet status   $repo/.venv/bin/ofactl status --watch
  a shell        $repo/.venv/bin/ofactl lab exec lb1 -- journalctl -u keepalived -n 20
  break things   $repo/.venv/bin/ofactl lab fault node1 kill ofa-agent
  rolling        $repo/.venv/bin/ofactl restart --rolling --batch 1 --yes
  clean up       $repo/.venv/bin/ofactl lab down
TXT
