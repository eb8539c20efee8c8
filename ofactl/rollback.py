"""`ofactl rollback [--to RELEASE]`: the previous agent release and its model, rolled out safely.

Releases live in `{base_dir}/releases/<id>` (id = `<UTC yyyymmddHHMMSS>-<sha8>`, so names sort
by time) with `{base_dir}/current` pointing at one; models in `{base_dir}/models/<digest12>` with
`{base_dir}/model`. Which model a release ran with is recorded in the release directory, in
`ofactl-model` (one line: the digest12), by `record_model_cmd` — rollouts write it for the
current release before touching anything, and deploy can call it after switching links.

Planning is pure (facts text in, a per-node plan out); execution reuses the rolling restart:
each node's links are switched just before its own restart, while it is drained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ofactl import commands, facts
from ofactl.commands import q
from ofactl.errors import OperationError, UsageError

MODEL_RECORD = "ofactl-model"
_MARK = "@@rollback "
_TIMEOUT = 20.0


def facts_cmd(base_dir: str) -> str:
    """One shell round trip: current + model links, releases with their model records, models."""
    b = q(base_dir)
    return (
        f"echo '{_MARK}current'; readlink {b}/current || true; "
        f"echo '{_MARK}model'; readlink {b}/model || true; "
        f"echo '{_MARK}releases'; for r in $(ls -1 {b}/releases 2>/dev/null); do "
        f"printf '%s %s\\n' \"$r\" \"$(cat {b}/releases/$r/{MODEL_RECORD} 2>/dev/null "
        f"| head -n1)\"; done; "
        f"echo '{_MARK}models'; ls -1 {b}/models 2>/dev/null || true"
    )


@dataclass(frozen=True)
class ReleaseFacts:
    """A node's releases: current id, current model digest12, {release: model digest12}."""

    current: str
    model: str
    releases: Mapping[str, str]
    models: tuple[str, ...]


def parse_facts(text: str) -> ReleaseFacts:
    """Parse facts_cmd output."""
    sections: dict[str, list[str]] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith(_MARK):
            key = line[len(_MARK):].strip()
            sections[key] = []
        elif key and line.strip():
            sections[key].append(line.strip())

    def base(link: list[str]) -> str:
        return link[0].rstrip("/").rsplit("/", 1)[-1] if link else ""

    releases: dict[str, str] = {}
    for line in sections.get("releases", []):
        name, _, digest = line.partition(" ")
        if name.endswith("ofactl-tmp") or name.startswith("."):
            continue
        releases[name] = digest.strip()
    return ReleaseFacts(current=base(sections.get("current", [])),
                        model=base(sections.get("model", [])),
                        releases=dict(sorted(releases.items())),
                        models=tuple(sorted(sections.get("models", []))))


@dataclass(frozen=True)
class NodeRollback:
    """What rollback does on one node."""

    node: str
    from_release: str
    to_release: str
    from_model: str
    to_model: str  # digest12; equal to from_model when the model stays
    note: str = ""

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly form."""
        return {"node": self.node, "from_release": self.from_release,
                "to_release": self.to_release, "from_model": self.from_model,
                "to_model": self.to_model, "note": self.note}


def previous_release(f: ReleaseFacts) -> str | None:
    """The newest release older than the current one (names sort by time)."""
    older = [r for r in f.releases if r < f.current]
    return older[-1] if older else None


def plan_rollback(per_node: Mapping[str, ReleaseFacts], to: str | None = None
                  ) -> list[NodeRollback]:
    """Per node: which release and model to switch to; errors name every node that cannot."""
    targets: dict[str, str] = {}
    problems: list[str] = []
    for node, f in per_node.items():
        if not f.current:
            problems.append(f"{node}: no current release (never deployed?)")
            continue
        if to is not None:
            if to not in f.releases:
                problems.append(f"{node}: release {to} is not on the node "
                                f"(has: {', '.join(f.releases) or 'none'})")
                continue
            targets[node] = to
        else:
            prev = previous_release(f)
            if prev is None:
                problems.append(f"{node}: no release older than {f.current} to go back to")
                continue
            targets[node] = prev
    if problems:
        raise UsageError("rollback: " + "; ".join(problems),
                         hint="ofactl rollback --to RELEASE with a release every node has")
    if to is None and len(set(targets.values())) > 1:
        raise UsageError(
            "rollback: the nodes would go back to different releases ("
            + ", ".join(f"{n}: {r}" for n, r in sorted(targets.items())) + ")",
            hint="pick one with --to RELEASE",
        )
    plans = []
    for node, target in targets.items():
        f = per_node[node]
        digest = f.releases.get(target, "")
        note = ""
        to_model = f.model
        if digest and digest in f.models:
            to_model = digest
        elif digest:
            note = f"model {digest} of {target} is no longer on the node; model kept"
        else:
            note = f"no model recorded for {target}; model kept"
        plans.append(NodeRollback(node, f.current, target, f.model, to_model, note))
    return plans


def record_model_cmd(base_dir: str, release: str, digest12: str) -> str:
    """Write `releases/<release>/ofactl-model` (the model a release runs with), atomically."""
    path = f"{base_dir}/releases/{release}/{MODEL_RECORD}"
    tmp = path + ".ofactl-tmp"
    return f"printf '%s\\n' {q(digest12)} > {q(tmp)} && mv -fT {q(tmp)} {q(path)}"


def switch_cmds(base_dir: str, p: NodeRollback) -> list[str]:
    """The link switches on one node (model first: the new release starts with its model)."""
    cmds = []
    if p.to_model and p.to_model != p.from_model:
        cmds.append(commands.atomic_symlink(f"models/{p.to_model}", f"{base_dir}/model"))
    cmds.append(commands.atomic_symlink(f"releases/{p.to_release}", f"{base_dir}/current"))
    return cmds


def gather(inv: Any, transport: Callable[[str], Any], nodes: Sequence[str]
           ) -> dict[str, ReleaseFacts]:
    """Release facts of each node (one SSH round trip each)."""
    out = {}
    for name in nodes:
        node = inv.node(name)
        res = transport(name).run(facts_cmd(node.agent.base_dir), timeout=_TIMEOUT,
                                  readonly=True)
        out[name] = parse_facts(res.stdout)
    return out


def check_info(name: str, body: str, p: NodeRollback) -> None:
    """After the restart: /v1/info must report the target model (and release, if it reports
    one)."""
    info = facts.parse_info(body)
    release = str(info.get("release") or "")
    digest = str((info.get("model") or {}).get("digest") or "")
    if release and release != p.to_release:
        raise OperationError(f"{name}: reports release {release} after the rollback, "
                             f"expected {p.to_release}")
    if digest and p.to_model and not digest.startswith(p.to_model):
        raise OperationError(f"{name}: serves model {digest[:12]} after the rollback, "
                             f"expected {p.to_model}")


def rollback(
    inv: Any,
    factory: Callable[[Any], Any],
    *,
    to: str | None = None,
    nodes: Sequence[str] | None = None,
    batch: str | int = 1,
    canary: int = 0,
    min_ready: Any = None,
    max_fail: int = 0,
    pause_s: float = 0.0,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    plan_only: bool = False,
) -> tuple[list[NodeRollback], Any]:
    """Plan the rollback, then run it with the rolling machinery; (plans, RollingResult|None)."""
    from ofactl.rolling import restart_nodes
    from ofactl.rollops import FleetOps

    names = [n.name for n in inv.nodes] if nodes is None else list(nodes)
    ops = FleetOps(inv, factory)
    try:
        per_node = gather(inv, ops.t, names)
        plans = plan_rollback(per_node, to)
        if plan_only:
            return plans, None
        by_node = {p.node: p for p in plans}
        # remember which model the release we leave ran with, so a later rollback can return
        for p in plans:
            base = inv.node(p.node).agent.base_dir
            if p.from_model and not per_node[p.node].releases.get(p.from_release):
                ops.t(p.node).run(record_model_cmd(base, p.from_release, p.from_model),
                                  timeout=_TIMEOUT)

        def before_restart(name: str) -> None:
            base = inv.node(name).agent.base_dir
            for cmd in switch_cmds(base, by_node[name]):
                ops.t(name).run(cmd, timeout=_TIMEOUT)

        def verify(name: str) -> None:
            node = inv.node(name)
            res = ops.t(name).run(commands.curl_status(
                f"http://127.0.0.1:{node.agent.port}/v1/info", 2.0), timeout=_TIMEOUT,
                readonly=True, check=False)
            code, body = facts.parse_curl_status(res.stdout)
            if code != 200:
                raise OperationError(f"{name}: /v1/info answered {code or 'nothing'}")
            check_info(name, body, by_node[name])

        result = restart_nodes(inv, factory, names, batch=batch, canary=canary,
                               min_ready=min_ready, max_fail=max_fail, pause_s=pause_s,
                               before_restart=before_restart, verify=verify,
                               on_event=on_event or (lambda k, d: None), ops=ops)
        return plans, result
    finally:
        ops.close()
