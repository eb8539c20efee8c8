"""The lab inventory (docs/contracts.md, version 1) plus the control side's key material."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import yaml

from ofactl.lab.plan import (
    HOST_RUNTIME,
    PRIVATE_SITE,
    PUBLIC_SITE,
    VIP,
    VIRTUAL_ROUTER_ID,
    LabPlan,
)
from ofactl.lab.system import run

MODEL_ID = "iic/ofa_visual-entailment_snli-ve_large_en"
MODEL_REVISION = "v1.0.1"


def ensure_key(plan: LabPlan) -> str:
    """The lab's ed25519 key pair (created once per lab name); returns the public key line."""
    plan.control_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(plan.control_dir, 0o700)
    key = plan.key_file
    pub = key.with_name(key.name + ".pub")
    if not (key.exists() and pub.exists()):
        for p in (key, pub):
            if p.exists():
                p.unlink()
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"ofactl-lab-{plan.name}",
             "-f", str(key)], what="lab key")
    os.chmod(key, 0o600)
    return pub.read_text().strip()


def _secret_file(path: Path, nbytes: int, length: int | None = None) -> Path:
    if not path.exists():
        value = secrets.token_hex(nbytes)
        path.write_text((value[:length] if length else value) + "\n")
    os.chmod(path, 0o600)
    return path


def write_known_hosts(plan: LabPlan, host_keys: dict[str, str]) -> Path:
    """known_hosts: one line per host, by name and address (strict checking works for both)."""
    lines = [f"{h.name},{h.address} {host_keys[h.name]}" for h in plan.hosts if h.name in host_keys]
    plan.known_hosts.write_text("\n".join(lines) + "\n")
    os.chmod(plan.known_hosts, 0o600)
    return plan.known_hosts


def render_inventory(plan: LabPlan, token_file: Path, vrrp_file: Path) -> dict[str, Any]:
    """The inventory document for the lab (pure)."""
    sites: list[dict[str, Any]] = []
    for site, cloud, provider in ((PRIVATE_SITE, "private", "lab-onprem"),
                                  (PUBLIC_SITE, "public", "lab-cloud")):
        nodes = [h for h in plan.nodes if h.site == site]
        lbs = [h for h in plan.lbs if h.site == site]
        if not nodes and not lbs:
            continue
        entry: dict[str, Any] = {
            "name": site,
            "cloud": cloud,
            "provider": provider,
            "nodes": [
                {"name": n.name, "address": n.address, "weight": n.weight,
                 "labels": {"lab": plan.name}}
                for n in nodes
            ],
        }
        if lbs:
            entry["lb"] = {
                "vip": VIP,
                "interface": "eth0",
                "virtual_router_id": VIRTUAL_ROUTER_ID,
                "advert_int": 1,
                "auth_pass": {"file": str(vrrp_file)},
                # a unicast group needs a peer: a single LB speaks multicast
                "mode": "unicast" if len(lbs) > 1 else "multicast",
                "preempt": True,
                "upstream": "fleet",
                "members": [
                    {"name": m.name, "address": m.address, "priority": m.priority} for m in lbs
                ],
            }
        sites.append(entry)
    model: dict[str, Any] = {"id": MODEL_ID, "revision": MODEL_REVISION, "source": "push"}
    if plan.model_dir:
        model["local_dir"] = plan.model_dir
    return {
        "version": 1,
        "fleet": plan.name,
        "defaults": {
            "ssh": {
                "user": "root",
                "port": 22,
                "key_file": str(plan.key_file),
                "known_hosts": str(plan.known_hosts),
                "jump_host": None,
                "connect_timeout": 10,
                "sudo": False,
            },
            "weight": 1,
            "accelerator": "cpu",
        },
        "agent": {
            "port": 8000,
            # every host sees the machine's runtime venv bound read-only at HOST_RUNTIME
            "runtime": HOST_RUNTIME,
            "runtime_source": "present",
            "base_dir": "/opt/ofa",
            "device": "cpu",
            # every lab agent shares this machine's cores: one torch thread each, or 4 agents
            # x torch's default of one thread per core oversubscribe them under load
            "torch_threads": 1,
            "token": {"file": str(token_file)},
        },
        "model": model,
        "sites": sites,
    }


def write_inventory(plan: LabPlan) -> Path:
    """Write the lab inventory (and its secret files) under the control directory."""
    plan.control_dir.mkdir(parents=True, exist_ok=True)
    token = _secret_file(plan.control_dir / "agent-token", 24)
    vrrp = _secret_file(plan.control_dir / "vrrp-pass", 4, length=8)  # keepalived: <= 8 chars
    doc = render_inventory(plan, token, vrrp)
    header = (
        f"# ofactl lab '{plan.name}' — written by `ofactl lab up`; rewritten on every lab up.\n"
        f"# {len(plan.lbs)} LBs + {len(plan.nodes)} nodes on bridge 10.213.0.1/24, VIP {VIP}.\n"
        f"# agent.runtime: this machine's venv {plan.runtime}, bound read-only in every host.\n"
    )
    tmp = plan.inventory_path.with_suffix(".yaml.tmp")
    tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    os.replace(tmp, plan.inventory_path)
    return plan.inventory_path
