"""The fleet inventory: YAML -> frozen dataclasses, with every check done at load.

Errors read `<file>:<line>: <key.path[2].x>: <what is wrong>, expected <shape>` plus a hint (the
line of the key, or of its nearest parent in the file when the key is missing). All problems of
a file are collected and reported together (one per line, in file order); the hint is the first
problem's.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ofactl.errors import InventoryError, UsageError

REDACTED = "[REDACTED]"

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DURATION_RE = re.compile(r"^[0-9]+(ms|s|m|h)$")
JUMP_RE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(?::[0-9]{1,5})?$")
IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")

NOTIFY_KINDS = ("master", "backup", "fault", "stop")

_NAME_SHAPE = "a lowercase name of letters, digits and '-' (at most 63 characters)"


# --------------------------------------------------------------------------- model


class FrozenMap(dict[str, str]):
    """A read-only str -> str mapping that hashes, so hosts can go in sets and dict keys."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("inventory mappings are read-only")

    __setitem__ = __delitem__ = _readonly
    clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]


@dataclass(frozen=True)
class SecretRef:
    """A secret given by reference ({env: VAR} or {file: PATH}); read only by resolve()."""

    env: str | None = None
    file: Path | None = None
    where: str = field(default="", compare=False)

    def resolve(self) -> str:
        """Read the secret now (environment variable or file, surrounding whitespace stripped)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None or value == "":
                raise InventoryError(
                    f"{self.where}: environment variable {self.env} is not set",
                    hint=f"export {self.env}=... (the value is never printed)",
                )
            return value.strip()
        assert self.file is not None
        try:
            value = self.file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise InventoryError(
                f"{self.where}: cannot read secret file {self.file}: {err.strerror}",
                hint="create the file (mode 0600) or point the reference at another file",
            ) from None
        if not value:
            raise InventoryError(
                f"{self.where}: secret file {self.file} is empty",
                hint="write the secret into the file (mode 0600)",
            )
        return value

    def describe(self) -> dict[str, str]:
        """The reference itself (never the value), for `inventory show`."""
        if self.env is not None:
            return {"env": self.env}
        return {"file": str(self.file)}

    def __repr__(self) -> str:
        ref = f"env={self.env!r}" if self.env is not None else f"file={str(self.file)!r}"
        return f"SecretRef({ref}, value={REDACTED})"

    __str__ = __repr__


@dataclass(frozen=True)
class SSHSettings:
    """How to reach one host over SSH."""

    user: str
    port: int
    key_file: Path | None
    known_hosts: Path | None
    jump_host: str | None
    connect_timeout: int
    sudo: bool


@dataclass(frozen=True)
class AgentSettings:
    """Settings of the node agent (fleet-wide, with per-node overrides merged)."""

    port: int
    runtime: str
    runtime_source: str
    base_dir: str
    keep_releases: int
    device: str
    dtype: str
    max_batch_size: int
    max_queue_delay_ms: int
    max_queue: int
    request_timeout_s: int
    drain_timeout_s: int
    max_body_bytes: int
    max_image_pixels: int
    max_text_chars: int
    ready_timeout_s: int
    token: SecretRef
    require_token: bool = False
    warmup: int = 1
    torch_threads: int = 0
    prepare_threads: int = 1

    @property
    def model_dir(self) -> str:
        """The model symlink on the node ({base_dir}/model)."""
        return f"{self.base_dir}/model"

    @property
    def current_dir(self) -> str:
        """The current release symlink on the node ({base_dir}/current)."""
        return f"{self.base_dir}/current"


@dataclass(frozen=True)
class ModelSettings:
    """The ModelScope model the fleet serves."""

    id: str
    revision: str
    source: str
    local_dir: Path


@dataclass(frozen=True)
class Node:
    """An inference node (runs ofa-agent)."""

    name: str
    address: str
    site: str
    cloud: str
    provider: str
    weight: int
    accelerator: str
    labels: Mapping[str, str]
    ssh: SSHSettings
    agent: AgentSettings
    role: str = "node"


@dataclass(frozen=True)
class LBMember:
    """One member of a load-balancer pair, as listed in its group."""

    name: str
    address: str
    priority: int


@dataclass(frozen=True)
class LBGroup:
    """A site's load-balancer pair: VRRP settings shared by its members."""

    site: str
    vip: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    interface: str
    virtual_router_id: int
    advert_int: int
    auth_pass: SecretRef
    mode: str
    preempt: bool
    upstream: str
    notify: Mapping[str, str]
    members: tuple[LBMember, ...]
    max_fails: int = 2
    fail_timeout_s: int = 10
    keepalive: int = 32
    proxy_next_upstream_tries: int = 3

    @property
    def vip_address(self) -> str:
        """The VIP without its prefix length."""
        return str(self.vip.ip)

    @property
    def master(self) -> LBMember:
        """The member with the highest priority (the preferred VIP holder)."""
        return max(self.members, key=lambda m: m.priority)


@dataclass(frozen=True)
class LBHost:
    """A load-balancer host (runs nginx + keepalived)."""

    name: str
    address: str
    site: str
    priority: int
    ssh: SSHSettings
    group: LBGroup
    cloud: str = ""
    provider: str = ""
    role: str = "lb"


@dataclass(frozen=True)
class Site:
    """A site (data centre or cloud region) with its nodes and optional LB pair."""

    name: str
    cloud: str
    provider: str
    nodes: tuple[Node, ...]
    lb: LBGroup | None


@dataclass(frozen=True)
class MonitoringSettings:
    """Where Prometheus runs (an LB host) and how often it scrapes."""

    host: str
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"


Host = Node | LBHost


@dataclass(frozen=True)
class HookSettings:
    """Local commands run on the control machine around deploy, restart and rollback."""

    commands: Mapping[str, tuple[str, ...]]  # hook name -> argv (no shell)
    timeout_s: int = 60

    def get(self, name: str) -> tuple[str, ...] | None:
        """The argv of hook `name` (e.g. pre_deploy), or None when it is not configured."""
        return self.commands.get(name)


@dataclass(frozen=True, eq=False)
class Inventory:
    """A validated inventory (compared and hashed by identity)."""

    path: Path
    version: int
    fleet: str
    agent: AgentSettings
    model: ModelSettings
    sites: tuple[Site, ...]
    nodes: tuple[Node, ...]
    lbs: tuple[LBHost, ...]
    lb_groups: tuple[LBGroup, ...]
    monitoring: MonitoringSettings | None
    lab: Mapping[str, Any]
    hooks: HookSettings = field(default_factory=lambda: HookSettings({}))

    @property
    def hosts(self) -> tuple[Host, ...]:
        """Every host: nodes first, then LB members, in file order."""
        return (*self.nodes, *self.lbs)

    def host(self, name: str) -> Host:
        """The node or LB host called `name` (UsageError with a suggestion otherwise)."""
        for h in self.hosts:
            if h.name == name:
                return h
        names = [h.name for h in self.hosts]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known hosts: {', '.join(names)}"
        raise UsageError(f"{self.path}: no host named '{name}'", hint=hint)

    def node(self, name: str) -> Node:
        """The inference node called `name`."""
        h = self.host(name)
        if not isinstance(h, Node):
            raise UsageError(f"{self.path}: '{name}' is a load balancer, not a node",
                             hint="pick one of: " + ", ".join(n.name for n in self.nodes))
        return h

    def select(self, nodes: str | None = None, cloud: str | None = None,
               role: str | None = None) -> list[Host]:
        """Hosts matching a name glob (comma-separated globs allowed), a cloud and a role.

        role is 'node', 'lb' or None (both); the result keeps file order and may be empty.
        """
        if role not in (None, "node", "lb"):
            raise UsageError(f"unknown role '{role}'", hint="use 'node' or 'lb'")
        if cloud not in (None, "private", "public"):
            raise UsageError(f"unknown cloud '{cloud}'", hint="use 'private' or 'public'")
        globs = [g.strip() for g in nodes.split(",") if g.strip()] if nodes else []
        out: list[Host] = []
        for h in self.hosts:
            if role is not None and h.role != role:
                continue
            if cloud is not None and h.cloud != cloud:
                continue
            if globs and not any(fnmatch.fnmatchcase(h.name, g) for g in globs):
                continue
            out.append(h)
        return out

    def upstream_nodes(self, group: LBGroup) -> tuple[Node, ...]:
        """The nodes an LB group proxies to (every node, or only its site's)."""
        if group.upstream == "site":
            return tuple(n for n in self.nodes if n.site == group.site)
        return self.nodes

    def lb_group(self, site: str) -> LBGroup | None:
        """The LB group of a site, if it has one."""
        for g in self.lb_groups:
            if g.site == site:
                return g
        return None

    def secret_refs(self) -> list[SecretRef]:
        """Every distinct secret reference (agent token, each LB pair's VRRP password)."""
        refs: list[SecretRef] = []
        for ref in [self.agent.token, *(n.agent.token for n in self.nodes),
                    *(g.auth_pass for g in self.lb_groups)]:
            if ref not in refs:
                refs.append(ref)
        return refs

    def check_secrets(self) -> None:
        """Resolve every secret (values discarded); InventoryError listing the unreadable ones."""
        problems: list[InventoryError] = []
        for ref in self.secret_refs():
            try:
                ref.resolve()
            except InventoryError as err:
                problems.append(err)
        if problems:
            raise InventoryError("\n".join(f"{self.path}: {e.message}" for e in problems),
                                 hint=problems[0].hint)

    def as_dict(self) -> dict[str, Any]:
        """The resolved inventory as plain data (secret values never included)."""

        def ssh(s: SSHSettings) -> dict[str, Any]:
            return {"user": s.user, "port": s.port,
                    "key_file": str(s.key_file) if s.key_file else None,
                    "known_hosts": str(s.known_hosts) if s.known_hosts else None,
                    "jump_host": s.jump_host, "connect_timeout": s.connect_timeout,
                    "sudo": s.sudo}

        def agent(a: AgentSettings) -> dict[str, Any]:
            d = {k: getattr(a, k) for k in a.__dataclass_fields__ if k != "token"}
            d["token"] = {**a.token.describe(), "value": REDACTED}
            return d

        nodes = []
        for n in self.nodes:
            nodes.append({"name": n.name, "address": n.address, "site": n.site,
                          "cloud": n.cloud, "provider": n.provider, "weight": n.weight,
                          "accelerator": n.accelerator, "labels": dict(n.labels),
                          "ssh": ssh(n.ssh), "agent": agent(n.agent)})
        groups = []
        for g in self.lb_groups:
            groups.append({
                "site": g.site, "vip": str(g.vip), "interface": g.interface,
                "virtual_router_id": g.virtual_router_id, "advert_int": g.advert_int,
                "auth_pass": {**g.auth_pass.describe(), "value": REDACTED},
                "mode": g.mode, "preempt": g.preempt, "upstream": g.upstream,
                "notify": dict(g.notify), "max_fails": g.max_fails,
                "fail_timeout_s": g.fail_timeout_s, "keepalive": g.keepalive,
                "proxy_next_upstream_tries": g.proxy_next_upstream_tries,
                "upstream_nodes": [n.name for n in self.upstream_nodes(g)],
                "members": [{"name": m.name, "address": m.address, "priority": m.priority}
                            for m in g.members],
            })
        lbs = [{"name": lb.name, "address": lb.address, "site": lb.site,
                "priority": lb.priority, "ssh": ssh(lb.ssh)} for lb in self.lbs]
        return {
            "path": str(self.path), "version": self.version, "fleet": self.fleet,
            "agent": agent(self.agent),
            "model": {"id": self.model.id, "revision": self.model.revision,
                      "source": self.model.source, "local_dir": str(self.model.local_dir)},
            "nodes": nodes, "lbs": lbs, "lb_groups": groups,
            "monitoring": None if self.monitoring is None else {
                "host": self.monitoring.host,
                "scrape_interval": self.monitoring.scrape_interval,
                "evaluation_interval": self.monitoring.evaluation_interval},
            "lab": dict(self.lab),
            "hooks": {**{k: list(v) for k, v in self.hooks.commands.items()},
                      "timeout_s": self.hooks.timeout_s} if self.hooks.commands else None,
        }


# --------------------------------------------------------------------------- validation


class _Missing:
    pass


_MISSING = _Missing()


def _show(value: Any) -> str:
    """A short YAML-ish rendering of a bad value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Checker:
    """Collects problems while walking the raw YAML."""

    def __init__(self, file: str, base: Path) -> None:
        self.file = file
        self.base = base
        self.problems: list[tuple[str, str]] = []  # (line without file, hint)

    def bad(self, path: str, what: str, expected: str | None, hint: str) -> None:
        line = f"{path}: {what}" + (f", expected {expected}" if expected else "")
        self.problems.append((line, hint))

    # -- shapes -------------------------------------------------------------

    def mapping(self, value: Any, path: str, keys: Iterable[str],
                required: Iterable[str] = (), what: str = "a mapping") -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            self.bad(path, f"got {_show(value)}", what, f"write {path} as 'key: value' lines")
            return None
        allowed = list(keys)
        for k in value:
            if not isinstance(k, str) or k not in allowed:
                close = difflib.get_close_matches(str(k), allowed, n=1)
                hint = (f"did you mean '{close[0]}'?" if close
                        else f"remove '{k}' (allowed here: {', '.join(allowed)})")
                self.bad(_join(path, str(k)), "unknown key",
                         "one of: " + ", ".join(allowed), hint)
        for k in required:
            if k not in value:
                self.bad(_join(path, k), "missing", "a value",
                         f"add '{k}:' under {path or 'the top level'}")
        return dict(value)

    def integer(self, d: Mapping[str, Any], key: str, path: str, default: Any = _MISSING,
                lo: int | None = None, hi: int | None = None) -> int:
        p = _join(path, key)
        v = d.get(key, default)
        if isinstance(v, _Missing):
            return lo if lo is not None else 0
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (
                hi is not None and v > hi):
            if lo is not None and hi is not None:
                shape = f"an integer from {lo} to {hi}"
            elif lo is not None:
                shape = f"an integer >= {lo}"
            else:
                shape = "an integer"
            self.bad(p, f"got {_show(v)}", shape, f"set {key} to {shape}")
            return lo if lo is not None else 0
        return v

    def string(self, d: Mapping[str, Any], key: str, path: str, default: Any = _MISSING,
               pattern: re.Pattern[str] | None = None, shape: str = "a non-empty string",
               hint: str | None = None) -> str:
        p = _join(path, key)
        v = d.get(key, default)
        if isinstance(v, _Missing):
            return ""
        if not isinstance(v, str) or not v or (pattern is not None and not pattern.match(v)):
            self.bad(p, f"got {_show(v)}", shape, hint or f"set {key} to {shape}")
            return ""
        return v

    def boolean(self, d: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            self.bad(_join(path, key), f"got {_show(v)}", "true or false",
                     f"write {key}: true or {key}: false")
            return default
        return v

    def choice(self, d: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...],
               default: Any = _MISSING) -> str:
        v = d.get(key, default)
        if isinstance(v, _Missing):
            return choices[0]
        if v not in choices:
            close = difflib.get_close_matches(str(v), choices, n=1) if isinstance(v, str) else []
            hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(choices)}"
            self.bad(_join(path, key), f"got {_show(v)}", " or ".join(choices), hint)
            return choices[0]
        return str(v)

    def name(self, d: Mapping[str, Any], key: str, path: str) -> str:
        return self.string(d, key, path, pattern=NAME_RE, shape=_NAME_SHAPE,
                           hint="use a short DNS-style name such as dc1-node1")

    def path_value(self, d: Mapping[str, Any], key: str, path: str, default: Any,
                   must_exist: bool, what: str) -> Path | None:
        v = d.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            self.bad(_join(path, key), f"got {_show(v)}", "a file path or null",
                     f"set {key} to a path (relative to the inventory file) or null")
            return None
        resolved = self.resolve_path(v)
        if must_exist and not resolved.is_file():
            self.bad(_join(path, key), f"{resolved} does not exist", what,
                     f"create it (e.g. ssh-keygen -t ed25519 -f {v}) or fix the path "
                     "(relative paths are relative to the inventory file)")
        return resolved

    def resolve_path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def secret(self, d: Mapping[str, Any], key: str, path: str, example: str) -> SecretRef:
        p = _join(path, key)
        v = d.get(key, _MISSING)
        shape = "{env: VAR} or {file: PATH}"
        if isinstance(v, _Missing):
            self.bad(p, "missing", shape, f"add '{key}: {{env: {example}}}'")
            return SecretRef(env=example, where=p)
        if isinstance(v, str | int | float) and not isinstance(v, bool):
            # Never echo the value: it is a secret written inline.
            self.bad(p, "secret written inline", shape,
                     f"move the value out of the inventory, e.g. {key}: {{env: {example}}}")
            return SecretRef(env=example, where=p)
        m = self.mapping(v, p, ("env", "file"), what=shape)
        if m is None:
            return SecretRef(env=example, where=p)
        if len(m) != 1:
            self.bad(p, f"got {len(m)} keys", "exactly one of env or file",
                     f"write {key}: {{env: {example}}} or {key}: {{file: PATH}}")
            return SecretRef(env=example, where=p)
        if "env" in m:
            env = m["env"]
            if not isinstance(env, str) or not ENV_NAME_RE.match(env):
                self.bad(_join(p, "env"), f"got {_show(env)}", "an environment variable name",
                         f"e.g. {key}: {{env: {example}}}")
                return SecretRef(env=example, where=p)
            return SecretRef(env=env, where=p)
        f = m.get("file")
        if not isinstance(f, str) or not f:
            self.bad(_join(p, "file"), f"got {_show(f)}", "a file path",
                     f"e.g. {key}: {{file: secrets/{key}}}")
            return SecretRef(env=example, where=p)
        return SecretRef(file=self.resolve_path(f), where=p)


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                       deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_map(root: yaml.Node | None) -> dict[str, int]:
    """Key path (as the checker writes it: sites[0].nodes[1].agent.port) -> 1-based line."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, path: str, depth: int) -> None:
        if depth > 50:  # aliases may nest; the inventory never goes this deep
            return
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                child = _join(path, str(key_node.value))
                lines.setdefault(child, key_node.start_mark.line + 1)
                walk(value_node, child, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                child = _join(path, i)
                lines.setdefault(child, item.start_mark.line + 1)
                walk(item, child, depth + 1)

    if root is not None:
        walk(root, "", 0)
    return lines


_PATH_PART = re.compile(r"(\.[^.\[]+|\[\d+\])$")


def _line_of(problem: str, lines: Mapping[str, int]) -> int | None:
    """The line of a problem's key path, or of its nearest parent present in the file."""
    path = problem.split(": ", 1)[0]
    while path:
        if path in lines:
            return lines[path]
        shorter = _PATH_PART.sub("", path)
        if shorter == path:
            return None
        path = shorter
    return None


def _read_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(
            f"{path}: no such file",
            hint="pass -i/--inventory FILE or set $OFACTL_INVENTORY "
                 "(start from inventory.example.yaml)") from None
    except IsADirectoryError:
        raise InventoryError(f"{path}: is a directory, expected an inventory YAML file",
                             hint="pass the YAML file itself to -i/--inventory") from None
    except UnicodeDecodeError:
        raise InventoryError(f"{path}: not UTF-8 text, expected an inventory YAML file",
                             hint="save the file as UTF-8") from None
    except OSError as err:
        raise InventoryError(f"{path}: cannot read: {err.strerror}",
                             hint="check the path and its permissions") from None
    try:
        loader = _UniqueKeyLoader(text)  # a SafeLoader subclass
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
        return data, _line_map(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        what = err.problem or err.context or "invalid YAML"
        hint = "fix the YAML syntax at that position (indentation, ':' after keys, matching quotes)"
        syntax = InventoryError(f"{path}: {where}: {what}, expected valid YAML", hint=hint)
        syntax.located = [{  # type: ignore[attr-defined]
            "line": mark.line + 1 if mark else None, "path": None,
            "problem": f"{what}, expected valid YAML", "hint": hint}]
        raise syntax from None
    except yaml.YAMLError as err:
        raise InventoryError(f"{path}: {err}, expected valid YAML",
                             hint="fix the YAML syntax") from None


_TOP_KEYS = ("version", "fleet", "defaults", "agent", "model", "sites", "monitoring", "lab",
             "hooks")
HOOK_NAMES = ("pre_deploy", "post_deploy", "pre_restart", "post_restart", "pre_rollback",
              "post_rollback")
_SSH_KEYS = ("user", "port", "key_file", "known_hosts", "jump_host", "connect_timeout", "sudo")
_DEFAULT_KEYS = ("ssh", "weight", "accelerator")
_AGENT_KEYS = ("port", "runtime", "runtime_source", "base_dir", "keep_releases", "device",
               "dtype", "max_batch_size", "max_queue_delay_ms", "max_queue",
               "request_timeout_s", "drain_timeout_s", "max_body_bytes", "max_image_pixels",
               "max_text_chars", "ready_timeout_s", "token", "require_token", "warmup",
               "torch_threads", "prepare_threads")
_AGENT_OVERRIDE_KEYS = tuple(k for k in _AGENT_KEYS if k != "token")
_MODEL_KEYS = ("id", "revision", "source", "local_dir")
_SITE_KEYS = ("name", "cloud", "provider", "nodes", "lb")
_NODE_KEYS = ("name", "address", "weight", "accelerator", "labels", "ssh", "agent")
_LB_KEYS = ("vip", "interface", "virtual_router_id", "advert_int", "auth_pass", "mode",
            "preempt", "upstream", "notify", "members", "max_fails", "fail_timeout_s",
            "keepalive", "proxy_next_upstream_tries")
_MEMBER_KEYS = ("name", "address", "priority", "ssh")
_MONITORING_KEYS = ("host", "scrape_interval", "evaluation_interval")

_AGENT_DEFAULTS: dict[str, Any] = {
    "port": 8000, "runtime": "/opt/ofa/runtime", "runtime_source": "index",
    "base_dir": "/opt/ofa", "keep_releases": 3, "device": "auto", "dtype": "float32",
    "max_batch_size": 8, "max_queue_delay_ms": 10, "max_queue": 64, "request_timeout_s": 30,
    "drain_timeout_s": 20, "max_body_bytes": 8388608, "max_image_pixels": 40000000,
    "max_text_chars": 512, "ready_timeout_s": 300, "require_token": False, "warmup": 1,
    "torch_threads": 0, "prepare_threads": 1,
}
_SSH_DEFAULTS: dict[str, Any] = {
    "user": "root", "port": 22, "key_file": None, "known_hosts": "~/.ssh/known_hosts",
    "jump_host": None, "connect_timeout": 10, "sudo": False,
}


def _ssh(c: _Checker, raw: Mapping[str, Any], path: str, check_files: bool) -> SSHSettings:
    user = c.string(raw, "user", path, pattern=re.compile(r"^[a-z_][a-z0-9_-]*$"),
                    shape="a user name")
    port = c.integer(raw, "port", path, lo=1, hi=65535)
    key_file = c.path_value(raw, "key_file", path, None, check_files,
                            "an existing private key file")
    known_hosts = c.path_value(raw, "known_hosts", path, None, False, "a known_hosts file")
    jump = raw.get("jump_host")
    if jump is not None and (not isinstance(jump, str) or not JUMP_RE.match(jump)):
        c.bad(_join(path, "jump_host"), f"got {_show(jump)}", "'user@host:port' or null",
              "e.g. jump_host: ops@bastion.example.com:22")
        jump = None
    timeout = c.integer(raw, "connect_timeout", path, lo=1, hi=600)
    sudo = c.boolean(raw, "sudo", path, False)
    if user and user != "root" and not sudo and isinstance(raw.get("sudo"), bool):
        c.bad(_join(path, "sudo"), f"false for user '{user}'", "true when user is not root",
              "set sudo: true (ofactl writes /etc and runs systemctl)")
    return SSHSettings(user=user, port=port, key_file=key_file, known_hosts=known_hosts,
                       jump_host=jump, connect_timeout=timeout, sudo=sudo)


def _ssh_merged(c: _Checker, defaults: Mapping[str, Any], override: Any, path: str,
                defaults_path: str, check_files: bool, cache: dict[str, SSHSettings]
                ) -> SSHSettings:
    """defaults.ssh merged with a host's ssh: override; problems in the defaults once."""
    if override is None:
        if "default" not in cache:
            cache["default"] = _ssh(c, defaults, defaults_path, check_files)
        return cache["default"]
    m = c.mapping(override, path, _SSH_KEYS)
    if m is None:
        return cache.get("default") or _ssh(c, defaults, defaults_path, check_files)
    if "default" not in cache:
        cache["default"] = _ssh(c, defaults, defaults_path, check_files)
    # Check only the overridden keys under the host's own path.
    merged = {**defaults, **m}
    before = len(c.problems)
    s = _ssh(c, merged, path, check_files)
    # Drop problems reported under the host path for keys it did not override (a new user
    # makes the sudo check the host's own).
    own = set(m) | ({"sudo"} if "user" in m else set())
    kept = c.problems[:before] + [
        pr for pr in c.problems[before:]
        if any(pr[0].startswith(_join(path, k) + ":") for k in own)]
    c.problems[:] = kept
    return s


def _agent(c: _Checker, raw: Mapping[str, Any], path: str, token: SecretRef | None
           ) -> AgentSettings:
    i = c.integer
    tok = token if token is not None else c.secret(raw, "token", path, "OFA_AGENT_TOKEN")
    a = AgentSettings(
        port=i(raw, "port", path, lo=1, hi=65535),
        runtime=c.string(raw, "runtime", path, pattern=re.compile(r"^/"),
                         shape="an absolute path on the node"),
        runtime_source=c.choice(raw, "runtime_source", path, ("index", "wheelhouse", "present")),
        base_dir=c.string(raw, "base_dir", path, pattern=re.compile(r"^/[^\s]*[^/\s]$"),
                          shape="an absolute path on the node (no trailing '/')"),
        keep_releases=i(raw, "keep_releases", path, lo=1, hi=100),
        device=c.choice(raw, "device", path, ("auto", "cpu", "cuda")),
        dtype=c.choice(raw, "dtype", path, ("float32", "float16", "bfloat16")),
        max_batch_size=i(raw, "max_batch_size", path, lo=1, hi=1024),
        max_queue_delay_ms=i(raw, "max_queue_delay_ms", path, lo=0, hi=10000),
        max_queue=i(raw, "max_queue", path, lo=1, hi=100000),
        request_timeout_s=i(raw, "request_timeout_s", path, lo=1, hi=3600),
        drain_timeout_s=i(raw, "drain_timeout_s", path, lo=0, hi=3600),
        max_body_bytes=i(raw, "max_body_bytes", path, lo=1024, hi=1 << 31),
        max_image_pixels=i(raw, "max_image_pixels", path, lo=1),
        max_text_chars=i(raw, "max_text_chars", path, lo=1),
        ready_timeout_s=i(raw, "ready_timeout_s", path, lo=1, hi=86400),
        token=tok,
        require_token=c.boolean(raw, "require_token", path, False),
        warmup=i(raw, "warmup", path, lo=0, hi=100),
        torch_threads=i(raw, "torch_threads", path, lo=0, hi=256),
        prepare_threads=i(raw, "prepare_threads", path, lo=1, hi=64),
    )
    if a.max_queue < a.max_batch_size and isinstance(raw.get("max_queue"), int):
        c.bad(_join(path, "max_queue"), f"{a.max_queue} is below max_batch_size "
              f"{a.max_batch_size}", "max_queue >= max_batch_size",
              "raise max_queue or lower max_batch_size")
    return a


def load_inventory(path: str | os.PathLike[str], *, check_files: bool = True) -> Inventory:
    """Load and validate an inventory file; raise InventoryError listing every problem.

    check_files=False skips the existence check of SSH key files (for `render`, which never
    connects anywhere).
    """
    p = Path(path)
    data, line_map = _read_yaml(p)
    c = _Checker(str(p), p.resolve().parent)
    inv = _build(c, p, data, check_files)
    if c.problems or inv is None:
        # in file order (problems without a line, such as a missing top-level key, first)
        located = sorted(((_line_of(line, line_map), line, h) for line, h in c.problems),
                         key=lambda x: x[0] or 0)
        lines = [f"{p}:{at}: {line}" if at is not None else f"{p}: {line}"
                 for at, line, _ in located]
        hint = located[0][2] if located else "see inventory.example.yaml"
        if len(lines) > 1:
            hint += f" ({len(lines)} problems in all, fix them top to bottom)"
        err = InventoryError("\n".join(lines) or f"{p}: invalid inventory", hint=hint)
        err.problems = [line for _, line, _ in located]  # type: ignore[attr-defined]
        err.located = [  # type: ignore[attr-defined]
            {"line": at, "path": line.split(": ", 1)[0], "problem": line.split(": ", 1)[-1],
             "hint": h}
            for at, line, h in located]
        raise err
    return inv


def _build(c: _Checker, p: Path, data: Any, check_files: bool) -> Inventory | None:
    if data is None:
        c.bad("(top level)", "the file is empty", "a mapping with version, fleet, agent, "
              "model and sites", "start from inventory.example.yaml")
        return None
    top = c.mapping(data, "(top level)", _TOP_KEYS,
                    required=("version", "fleet", "agent", "model", "sites"),
                    what="a mapping with version, fleet, agent, model and sites")
    if top is None:
        return None
    # Missing keys at the top level read better without the "(top level)." prefix.
    c.problems = [(line.replace("(top level).", "", 1), h) for line, h in c.problems]

    version = top.get("version", 1)
    if version != 1 or isinstance(version, bool):
        c.bad("version", f"got {_show(version)}", "1", "this ofactl reads inventory version 1")
    fleet = c.name(top, "fleet", "") if "fleet" in top else ""

    # defaults
    dflt = c.mapping(top.get("defaults", {}) or {}, "defaults", _DEFAULT_KEYS) or {}
    ssh_raw = c.mapping(dflt.get("ssh", {}) or {}, "defaults.ssh", _SSH_KEYS) or {}
    ssh_defaults = {**_SSH_DEFAULTS, **ssh_raw}
    default_weight = c.integer(dflt, "weight", "defaults", default=1, lo=1, hi=1000)
    default_acc = c.choice(dflt, "accelerator", "defaults", ("cpu", "gpu"), default="cpu")
    ssh_cache: dict[str, SSHSettings] = {}

    # agent
    agent_raw = c.mapping(top.get("agent", {}), "agent", _AGENT_KEYS) \
        if "agent" in top else None
    agent_merged = {**_AGENT_DEFAULTS, **(agent_raw or {})}
    agent = _agent(c, agent_merged, "agent", None if agent_raw is not None else
                   SecretRef(env="OFA_AGENT_TOKEN", where="agent.token"))

    # model
    model = ModelSettings(id="", revision="", source="push", local_dir=p.parent)
    if "model" in top:
        mr = c.mapping(top["model"], "model", _MODEL_KEYS, required=("id", "revision"))
        if mr is not None:
            model = ModelSettings(
                id=c.string(mr, "id", "model", pattern=re.compile(r"^[\w.-]+/[\w.-]+$"),
                            shape="a ModelScope id 'owner/name'"),
                revision=c.string(mr, "revision", "model",
                                  pattern=re.compile(r"^[\w.+-]+$"),
                                  shape="a pinned revision such as v1.0.1",
                                  hint="pin the revision; never 'master'"),
                source=c.choice(mr, "source", "model", ("push", "hub"), default="push"),
                local_dir=c.resolve_path(mr["local_dir"]) if isinstance(
                    mr.get("local_dir"), str) and mr["local_dir"] else c.resolve_path(
                    "./models/" + (str(mr.get("id", "model")).split("/")[-1])),
            )
            if model.revision in ("master", "main", "latest"):
                c.bad("model.revision", f"got {_show(model.revision)}",
                      "a pinned revision such as v1.0.1",
                      "pin the revision so every node serves the same weights")
            if "local_dir" in mr and not (isinstance(mr["local_dir"], str) and mr["local_dir"]):
                c.bad("model.local_dir", f"got {_show(mr['local_dir'])}", "a directory path",
                      "e.g. local_dir: ./models/ofa-ve")

    # sites
    sites: list[Site] = []
    nodes: list[Node] = []
    lbs: list[LBHost] = []
    groups: list[LBGroup] = []
    seen_names: dict[str, str] = {}
    seen_addrs: dict[str, str] = {}
    seen_vrids: dict[int, str] = {}
    seen_sites: dict[str, str] = {}

    def unique_host(name: str, address: str, path: str) -> None:
        if name:
            if name in seen_names:
                c.bad(_join(path, "name"), f"duplicate host name '{name}' (first at "
                      f"{seen_names[name]})", "unique host names",
                      "rename one of the hosts")
            else:
                seen_names[name] = _join(path, "name")
        if address:
            key = address.lower()
            if key in seen_addrs:
                c.bad(_join(path, "address"), f"duplicate address {address} (first at "
                      f"{seen_addrs[key]})", "one host per address",
                      "give each host its own address")
            else:
                seen_addrs[key] = _join(path, "address")

    raw_sites = top.get("sites")
    if "sites" in top and (not isinstance(raw_sites, list) or not raw_sites):
        c.bad("sites", f"got {_show(raw_sites)}", "a non-empty list of sites",
              "list at least one site with its nodes")
        raw_sites = []
    for si, rs in enumerate(raw_sites or []):
        sp = f"sites[{si}]"
        s = c.mapping(rs, sp, _SITE_KEYS, required=("name", "cloud", "nodes"))
        if s is None:
            continue
        sname = c.name(s, "name", sp) if "name" in s else ""
        if sname:
            if sname in seen_sites:
                c.bad(_join(sp, "name"), f"duplicate site name '{sname}' (first at "
                      f"{seen_sites[sname]})", "unique site names", "rename one of the sites")
            else:
                seen_sites[sname] = _join(sp, "name")
        cloud = c.choice(s, "cloud", sp, ("private", "public")) if "cloud" in s else "private"
        provider = s.get("provider", "onprem" if cloud == "private" else "")
        if not isinstance(provider, str) or not provider:
            c.bad(_join(sp, "provider"), f"got {_show(provider)}",
                  "a provider name such as onprem, aws, gcp", "e.g. provider: aws")
            provider = ""
        site_nodes: list[Node] = []
        raw_nodes = s.get("nodes")
        if "nodes" in s and (not isinstance(raw_nodes, list) or not raw_nodes):
            c.bad(_join(sp, "nodes"), f"got {_show(raw_nodes)}", "a non-empty list of nodes",
                  "list the site's inference nodes (name, address)")
            raw_nodes = []
        for ni, rn in enumerate(raw_nodes or []):
            np_ = f"{sp}.nodes[{ni}]"
            n = c.mapping(rn, np_, _NODE_KEYS, required=("name", "address"))
            if n is None:
                continue
            name = c.name(n, "name", np_) if "name" in n else ""
            address = _address(c, n, np_, allow_hostname=True) if "address" in n else ""
            unique_host(name, address, np_)
            weight = c.integer(n, "weight", np_, default=default_weight, lo=1, hi=1000)
            acc = c.choice(n, "accelerator", np_, ("cpu", "gpu"), default=default_acc)
            labels_raw = n.get("labels", {}) or {}
            labels: dict[str, str] = {}
            if not isinstance(labels_raw, Mapping):
                c.bad(_join(np_, "labels"), f"got {_show(labels_raw)}",
                      "a mapping of label: value", "e.g. labels: {rack: a1}")
            else:
                for lk, lv in labels_raw.items():
                    if not isinstance(lk, str) or not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", lk) \
                            or isinstance(lv, Mapping | list) or lv is None:
                        c.bad(_join(_join(np_, "labels"), str(lk)), f"got {_show(lv)}",
                              "a label name [a-zA-Z_][a-zA-Z0-9_]* with a scalar value",
                              "e.g. labels: {rack: a1}")
                    else:
                        labels[lk] = str(lv).lower() if isinstance(lv, bool) else str(lv)
            ssh = _ssh_merged(c, ssh_defaults, n.get("ssh"), _join(np_, "ssh"),
                              "defaults.ssh", check_files, ssh_cache)
            node_agent = agent
            if "agent" in n:
                ao = c.mapping(n["agent"], _join(np_, "agent"), _AGENT_OVERRIDE_KEYS)
                if ao:
                    before = len(c.problems)
                    node_agent = _agent(c, {**agent_merged, **ao}, _join(np_, "agent"),
                                        agent.token)
                    c.problems[before:] = [
                        pr for pr in c.problems[before:]
                        if any(pr[0].startswith(_join(_join(np_, "agent"), k) + ":")
                               for k in ao)]
            if node_agent.device == "cuda" and acc != "gpu":
                where = (_join(_join(np_, "agent"), "device")
                         if "device" in (n.get("agent") or {}) else "agent.device")
                c.bad(where, f"cuda on node '{name}' whose accelerator is {acc}",
                      "device auto or cpu on a cpu node",
                      f"set accelerator: gpu on {name} or agent.device: auto")
            node = Node(name=name, address=address, site=sname, cloud=cloud,
                        provider=provider, weight=weight, accelerator=acc,
                        labels=FrozenMap(labels), ssh=ssh, agent=node_agent)
            site_nodes.append(node)
        group: LBGroup | None = None
        if s.get("lb") is not None:
            group = _lb(c, s["lb"], _join(sp, "lb"), sname, ssh_defaults, check_files,
                        ssh_cache, unique_host, seen_vrids)
            if group is not None:
                groups.append(group)
                raw_members = list(s["lb"]["members"])
                for m in group.members:
                    idx, mraw = next((i, x) for i, x in enumerate(raw_members)
                                     if isinstance(x, Mapping) and x.get("name") == m.name)
                    lb_ssh = _ssh_merged(
                        c, ssh_defaults, mraw.get("ssh"), f"{sp}.lb.members[{idx}].ssh",
                        "defaults.ssh", check_files, ssh_cache)
                    lbs.append(LBHost(name=m.name, address=m.address, site=sname,
                                      priority=m.priority, ssh=lb_ssh, group=group,
                                      cloud=cloud, provider=provider))
        nodes.extend(site_nodes)
        sites.append(Site(name=sname, cloud=cloud, provider=provider, nodes=tuple(site_nodes),
                          lb=group))

    # A VIP is nobody's own address and belongs to one LB pair only.
    seen_vips: dict[str, str] = {}
    for g in groups:
        where = f"sites[{_site_index(raw_sites, g.site)}].lb.vip"
        if g.vip_address.lower() in seen_addrs:
            c.bad(where,
                  f"{g.vip_address} is also the address of {seen_addrs[g.vip_address.lower()]}",
                  "a free address for the VIP", "pick an unused address in the subnet")
        elif g.vip_address in seen_vips:
            c.bad(where, f"duplicate VIP {g.vip_address} (first at {seen_vips[g.vip_address]})",
                  "one VIP per LB pair", "give each LB pair its own VIP")
        else:
            seen_vips[g.vip_address] = where

    # monitoring
    monitoring: MonitoringSettings | None = None
    if top.get("monitoring") is not None:
        mo = c.mapping(top["monitoring"], "monitoring", _MONITORING_KEYS)
        if mo is not None:
            host = mo.get("host")
            lb_names = [lb.name for lb in lbs]
            if host is None and lb_names:
                host = lb_names[0]
            if not isinstance(host, str) or host not in lb_names:
                close = difflib.get_close_matches(str(host), lb_names, n=1)
                c.bad("monitoring.host", f"got {_show(host)}",
                      "the name of a load-balancer host" + (
                          f" ({', '.join(lb_names)})" if lb_names else ""),
                      f"did you mean '{close[0]}'?" if close else
                      "Prometheus runs on an LB host; add an lb to a site")
                host = lb_names[0] if lb_names else ""
            si_ = c.string(mo, "scrape_interval", "monitoring", default="15s",
                           pattern=DURATION_RE, shape="a duration such as 15s or 1m")
            ei = c.string(mo, "evaluation_interval", "monitoring", default="15s",
                          pattern=DURATION_RE, shape="a duration such as 15s or 1m")
            monitoring = MonitoringSettings(host=host, scrape_interval=si_ or "15s",
                                            evaluation_interval=ei or "15s")
    elif lbs:
        monitoring = MonitoringSettings(host=lbs[0].name)

    lab = top.get("lab", {})
    if lab is None:
        lab = {}
    if not isinstance(lab, Mapping):
        c.bad("lab", f"got {_show(lab)}", "a mapping", "e.g. lab: {name: ofa-lab}")
        lab = {}

    hooks = _hooks(c, top.get("hooks"), p, check_files)

    if c.problems:
        return None
    return Inventory(path=p, version=1, fleet=fleet, agent=agent, model=model,
                     sites=tuple(sites), nodes=tuple(nodes), lbs=tuple(lbs),
                     lb_groups=tuple(groups), monitoring=monitoring, lab=dict(lab),
                     hooks=hooks)


def _hooks(c: _Checker, raw: Any, p: Path, check_files: bool) -> HookSettings:
    """hooks: {pre_deploy: CMD, ..., timeout_s: N}; CMD is split like a shell line, not run
    through one; a relative path with a '/' is taken from the inventory's directory."""
    if raw is None:
        return HookSettings({})
    m = c.mapping(raw, "hooks", (*HOOK_NAMES, "timeout_s"))
    if m is None:
        return HookSettings({})
    commands: dict[str, tuple[str, ...]] = {}
    for name in HOOK_NAMES:
        value = m.get(name)
        if value is None:
            continue
        path = _join("hooks", name)
        try:
            argv = tuple(shlex.split(value)) if isinstance(value, str) else ()
        except ValueError as err:
            c.bad(path, f"cannot split {_show(value)}: {err}", "a command line",
                  "balance the quotes")
            continue
        if not argv:
            c.bad(path, f"got {_show(value)}", "a command line such as scripts/notify.sh --ok",
                  f"set {name} to the command to run, or remove it")
            continue
        exe = argv[0]
        if "/" in exe:
            full = Path(exe).expanduser()
            full = full if full.is_absolute() else (p.resolve().parent / full)
            if check_files and not (full.is_file() and os.access(full, os.X_OK)):
                c.bad(path, f"{full} is not an executable file", "an executable hook script",
                      f"create it and chmod +x it, or fix the path (relative paths start at "
                      f"{p.resolve().parent})")
                continue
            argv = (str(full), *argv[1:])
        commands[name] = argv
    timeout = c.integer(m, "timeout_s", "hooks", default=60, lo=1, hi=3600)
    return HookSettings(commands, timeout)


def _site_index(raw_sites: Any, name: str) -> int:
    for i, s in enumerate(raw_sites or []):
        if isinstance(s, Mapping) and s.get("name") == name:
            return i
    return 0


def _address(c: _Checker, d: Mapping[str, Any], path: str, allow_hostname: bool) -> str:
    v = d.get("address")
    p = _join(path, "address")
    if isinstance(v, str):
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            pass
        if allow_hostname and HOSTNAME_RE.match(v) and not re.match(r"^[0-9.]+$", v):
            return v
    shape = "an IP address or a DNS name" if allow_hostname else "an IP address"
    c.bad(p, f"got {_show(v)}", shape, "e.g. address: 10.20.0.11")
    return ""


def _lb(c: _Checker, raw: Any, path: str, site: str, ssh_defaults: Mapping[str, Any],
        check_files: bool, ssh_cache: dict[str, SSHSettings], unique_host: Any,
        seen_vrids: dict[int, str]) -> LBGroup | None:
    lb = c.mapping(raw, path, _LB_KEYS,
                   required=("vip", "interface", "virtual_router_id", "auth_pass", "members"))
    if lb is None:
        return None
    vip: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    rv = lb.get("vip")
    if "vip" in lb:
        try:
            if not isinstance(rv, str) or "/" not in rv:
                raise ValueError
            vip = ipaddress.ip_interface(rv)
            if vip.network.prefixlen == vip.max_prefixlen:
                raise ValueError
        except ValueError:
            c.bad(_join(path, "vip"), f"got {_show(rv)}",
                  "an address with the interface's prefix length, such as 10.20.0.100/24",
                  "write the VIP with its prefix length (the subnet of the LB interface)")
            vip = None
    iface = c.string(lb, "interface", path, pattern=IFACE_RE,
                     shape="a network interface name such as eth0") if "interface" in lb else ""
    vrid = c.integer(lb, "virtual_router_id", path, lo=1, hi=255) if \
        "virtual_router_id" in lb else 0
    if vrid and "virtual_router_id" in lb:
        if vrid in seen_vrids:
            c.bad(_join(path, "virtual_router_id"), f"duplicate {vrid} (first at "
                  f"{seen_vrids[vrid]})", "a VRID unique in the fleet",
                  "give every LB pair its own virtual_router_id (1-255)")
        else:
            seen_vrids[vrid] = _join(path, "virtual_router_id")
    advert = c.integer(lb, "advert_int", path, default=1, lo=1, hi=255)
    auth = c.secret(lb, "auth_pass", path, "OFA_VRRP_PASS") if "auth_pass" in lb else \
        SecretRef(env="OFA_VRRP_PASS", where=_join(path, "auth_pass"))
    mode = c.choice(lb, "mode", path, ("unicast", "multicast"), default="unicast")
    preempt = c.boolean(lb, "preempt", path, True)
    upstream = c.choice(lb, "upstream", path, ("fleet", "site"), default="fleet")
    notify: dict[str, str] = {}
    if lb.get("notify") is not None:
        nm = c.mapping(lb["notify"], _join(path, "notify"), NOTIFY_KINDS,
                       what="a mapping of master|backup|fault|stop to a script path")
        for k, v in (nm or {}).items():
            if k not in NOTIFY_KINDS:
                continue
            if not isinstance(v, str) or not v.startswith("/") or re.search(r"[\s\"']", v):
                c.bad(_join(_join(path, "notify"), k), f"got {_show(v)}",
                      "an absolute script path without spaces or quotes",
                      "e.g. master: /usr/local/bin/move-eip.sh")
            else:
                notify[k] = v
    max_fails = c.integer(lb, "max_fails", path, default=2, lo=1, hi=100)
    fail_timeout = c.integer(lb, "fail_timeout_s", path, default=10, lo=1, hi=3600)
    keepalive = c.integer(lb, "keepalive", path, default=32, lo=1, hi=10000)
    tries = c.integer(lb, "proxy_next_upstream_tries", path, default=3, lo=1, hi=20)

    members: list[LBMember] = []
    rm = lb.get("members")
    if "members" in lb and (not isinstance(rm, list) or not rm):
        c.bad(_join(path, "members"), f"got {_show(rm)}", "a list of 1 or 2+ LB hosts",
              "list the LB hosts with name, address and priority")
        rm = []
    seen_prio: dict[int, str] = {}
    for mi, r in enumerate(rm or []):
        mp = f"{path}.members[{mi}]"
        m = c.mapping(r, mp, _MEMBER_KEYS, required=("name", "address", "priority"))
        if m is None:
            continue
        name = c.name(m, "name", mp) if "name" in m else ""
        address = _address(c, m, mp, allow_hostname=False) if "address" in m else ""
        unique_host(name, address, mp)
        prio = c.integer(m, "priority", mp, lo=1, hi=254) if "priority" in m else 0
        if prio and "priority" in m and isinstance(m["priority"], int):
            if prio in seen_prio:
                c.bad(_join(mp, "priority"), f"duplicate priority {prio} (also "
                      f"{seen_prio[prio]})", "distinct priorities within an LB pair",
                      "give the preferred VIP holder the higher priority")
            else:
                seen_prio[prio] = _join(mp, "priority")
        if vip is not None and address:
            addr = ipaddress.ip_address(address)
            if addr.version != vip.version or addr not in vip.network:
                c.bad(_join(path, "vip"), f"{vip} is outside the subnet of member '{name}' "
                      f"({address} on {iface or 'its interface'})",
                      f"a VIP inside {_net_of(address, vip)}",
                      "the VIP must be in the subnet of the LB interface; fix the VIP or "
                      "its prefix length")
        if name and address and prio:
            members.append(LBMember(name=name, address=address, priority=prio))
    if mode == "unicast" and isinstance(rm, list) and len(rm) < 2:
        c.bad(_join(path, "members"), f"unicast with {len(rm)} member and no peer",
              "at least 2 members for unicast", "add the second LB host, or use mode: "
              "multicast for a single LB")
    if "members" in lb and not members:
        return None
    if vip is None or not iface or not vrid:
        return None
    return LBGroup(site=site, vip=vip, interface=iface, virtual_router_id=vrid,
                   advert_int=advert, auth_pass=auth, mode=mode, preempt=preempt,
                   upstream=upstream, notify=FrozenMap(notify), members=tuple(members),
                   max_fails=max_fails, fail_timeout_s=fail_timeout, keepalive=keepalive,
                   proxy_next_upstream_tries=tries)


def _net_of(address: str, vip: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> str:
    try:
        return str(ipaddress.ip_interface(f"{address}/{vip.network.prefixlen}").network)
    except ValueError:
        return "the members' subnet"
