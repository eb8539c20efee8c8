"""Pure renderers: inventory -> the files each host needs (RenderedFile), nothing written.

Templates live in templates/ (Jinja2, StrictUndefined). Secrets are resolved only with
secrets=True; otherwise a placeholder stands in their place, so `render --out` output can be
shared and diffed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from ofactl.errors import RenderError, UsageError
from ofactl.inventory import REDACTED, Inventory, LBHost, Node

BANNER = "managed by ofactl — do not edit"
PLACEHOLDER = REDACTED
# keepalived truncates PASS authentication to 8 characters; this placeholder fits.
KEEPALIVED_PLACEHOLDER = "REDACTED"

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

# Destinations on the hosts.
AGENT_UNIT = "/etc/systemd/system/ofa-agent.service"
AGENT_ENV = "/etc/ofa-agent/agent.env"
AGENT_TOKEN = "/etc/ofa-agent/token"
NGINX_CONF = "/etc/nginx/nginx.conf"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
KEEPALIVED_DEFAULT = "/etc/default/keepalived"
PROM_CONF = "/etc/prometheus/prometheus.yml"
PROM_FILE_SD = "/etc/prometheus/file_sd/ofa-agents.json"
PROM_RULES = "/etc/prometheus/rules/ofactl.rules.yml"


@dataclass(frozen=True)
class RenderedFile:
    """One file for one host: where it goes, what it holds, and who reacts to a change.

    service: the unit to reload/restart when the file changes ("nginx", "keepalived",
    "ofa-agent", "prometheus") or None. secret: content holds a secret (when rendered with
    secrets=True) and must never be printed.
    """

    dest: str
    content: str
    mode: int
    owner: str
    group: str
    sha256: str
    secret: bool
    service: str | None

    def __repr__(self) -> str:
        body = REDACTED if self.secret else f"{len(self.content)} chars"
        return (f"RenderedFile(dest={self.dest!r}, mode={self.mode:#o}, owner={self.owner!r}, "
                f"group={self.group!r}, sha256={self.sha256[:12]!r}, secret={self.secret}, "
                f"service={self.service!r}, content={body})")


def _file(dest: str, content: str, mode: int, service: str | None, *, secret: bool = False,
          owner: str = "root", group: str = "root") -> RenderedFile:
    return RenderedFile(dest=dest, content=content, mode=mode, owner=owner, group=group,
                        sha256=hashlib.sha256(content.encode("utf-8")).hexdigest(),
                        secret=secret, service=service)


_env: jinja2.Environment | None = None


def _environment() -> jinja2.Environment:
    global _env
    if _env is None:
        _env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,  # config files, not HTML
        )
    return _env


def _template_line(err: BaseException, name: str) -> int | None:
    """The line inside the template where a runtime error happened (from the traceback)."""
    tb = err.__traceback__
    line = None
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if fname.endswith(name):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render_template(name: str, **ctx: Any) -> str:
    """Render templates/<name> with StrictUndefined; failures -> RenderError with file:line."""
    where = f"templates/{name}"
    try:
        tmpl = _environment().get_template(name)
        return tmpl.render(**ctx)
    except jinja2.TemplateSyntaxError as err:
        raise RenderError(f"{where}:{err.lineno}: {err.message}",
                          hint="fix the template syntax") from None
    except jinja2.TemplateNotFound:
        raise RenderError(f"{where}: template not found (looked in {TEMPLATES_DIR})",
                          hint="reinstall ofactl from a checkout that has templates/") from None
    except jinja2.UndefinedError as err:
        line = _template_line(err, name)
        raise RenderError(f"{where}:{line if line is not None else '?'}: {err.message}",
                          hint="the template uses a value the renderer does not pass") from None


def _banner(ctx_fleet: str, template: str) -> str:
    return f"{BANNER} (fleet {ctx_fleet}; template templates/{template})"


# --------------------------------------------------------------------------- per role


def _node_files(inv: Inventory, node: Node, secrets: bool) -> list[RenderedFile]:
    out: list[RenderedFile] = []
    for tmpl, dest, mode in (("systemd/ofa-agent.service.j2", AGENT_UNIT, 0o644),
                             ("agent/agent.env.j2", AGENT_ENV, 0o640)):
        content = render_template(tmpl, banner=_banner(inv.fleet, tmpl), fleet=inv.fleet,
                                  node=node, agent=node.agent, model=inv.model)
        out.append(_file(dest, content, mode, "ofa-agent"))
    # The token file holds the bare token (no banner: the agent reads the whole file).
    token = node.agent.token.resolve() if secrets else PLACEHOLDER
    out.append(_file(AGENT_TOKEN, token, 0o600, "ofa-agent", secret=True))
    return out


def _check_auth_pass(value: str, where: str) -> str:
    if len(value) > 8 or any(ch.isspace() or ch in "\"'#!" for ch in value):
        raise RenderError(
            f"{where}: the VRRP password must be 1-8 characters without spaces, quotes, "
            "'#' or '!'",
            hint="keepalived's PASS authentication uses at most 8 characters; "
                 "set a shorter value (it is never printed)")
    return value


def _lb_files(inv: Inventory, lb: LBHost, drained: frozenset[str], secrets: bool
              ) -> list[RenderedFile]:
    group = lb.group
    nodes = inv.upstream_nodes(group)
    servers = [{"name": n.name, "address": _host_port_addr(n.address), "port": n.agent.port,
                "weight": n.weight, "site": n.site, "cloud": n.cloud,
                "drained": n.name in drained} for n in nodes]
    request_timeout = max(n.agent.request_timeout_s for n in nodes) if nodes else \
        inv.agent.request_timeout_s
    max_body = max(n.agent.max_body_bytes for n in nodes) if nodes else inv.agent.max_body_bytes
    read_timeout = request_timeout + 10
    tmpl = "nginx/nginx.conf.j2"
    nginx = render_template(
        tmpl, banner=_banner(inv.fleet, tmpl), fleet=inv.fleet, lb=lb, group=group,
        servers=servers, vip_listen=_host_port_addr(group.vip_address),
        max_body_bytes=max_body, request_timeout_s=request_timeout,
        read_timeout_s=read_timeout, connect_timeout_s=3,
        next_upstream_timeout_s=read_timeout * group.proxy_next_upstream_tries)

    if secrets:
        auth = _check_auth_pass(group.auth_pass.resolve(), group.auth_pass.where)
    else:
        auth = KEEPALIVED_PLACEHOLDER
    peers = [m for m in group.members if m.name != lb.name]
    top = group.master
    state = "MASTER" if group.preempt and top.name == lb.name else "BACKUP"
    tmpl_k = "keepalived/keepalived.conf.j2"
    keepalived = render_template(
        tmpl_k, banner=_banner(inv.fleet, tmpl_k), fleet=inv.fleet, lb=lb, group=group,
        instance=f"VI_{lb.site.replace('-', '_')}", state=state, auth_pass=auth, peers=peers,
        notify=[(k, group.notify[k]) for k in ("master", "backup", "fault", "stop")
                if k in group.notify])
    tmpl_d = "keepalived/default.j2"
    default = render_template(tmpl_d, banner=_banner(inv.fleet, tmpl_d))
    files = [
        _file(NGINX_CONF, nginx, 0o644, "nginx"),
        _file(KEEPALIVED_CONF, keepalived, 0o600, "keepalived", secret=True),
        _file(KEEPALIVED_DEFAULT, default, 0o644, "keepalived"),
    ]
    if inv.monitoring is not None and inv.monitoring.host == lb.name:
        files.extend(_prometheus_files(inv))
    return files


def _host_port_addr(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _prometheus_files(inv: Inventory) -> list[RenderedFile]:
    assert inv.monitoring is not None
    tmpl = "prometheus/prometheus.yml.j2"
    conf = render_template(tmpl, banner=_banner(inv.fleet, tmpl), fleet=inv.fleet,
                           monitoring=inv.monitoring,
                           vips=[{"site": g.site, "vip": g.vip_address,
                                  "target": f"{_host_port_addr(g.vip_address)}:80"}
                                 for g in inv.lb_groups])
    tmpl_r = "prometheus/ofactl.rules.yml.j2"
    rules = render_template(tmpl_r, banner=_banner(inv.fleet, tmpl_r), fleet=inv.fleet)
    # file_sd is JSON, which has no comments: this one file carries no banner.
    sd = [{"targets": [f"{_host_port_addr(n.address)}:{n.agent.port}"],
           "labels": {"node": n.name, "site": n.site, "cloud": n.cloud,
                      "provider": n.provider, "accelerator": n.accelerator}}
          for n in inv.nodes]
    return [
        _file(PROM_CONF, conf, 0o644, "prometheus"),
        _file(PROM_FILE_SD, json.dumps(sd, indent=2) + "\n", 0o644, None),
        _file(PROM_RULES, rules, 0o644, "prometheus"),
    ]


# --------------------------------------------------------------------------- public API


def _check_drained(inv: Inventory, drained: Iterable[str]) -> frozenset[str]:
    names = {n.name for n in inv.nodes}
    unknown = sorted(set(drained) - names)
    if unknown:
        raise UsageError(f"{inv.path}: cannot drain unknown node(s): {', '.join(unknown)}",
                         hint="drain names must be inference nodes of the inventory")
    return frozenset(drained)


def render_host(inv: Inventory, name: str, *, drained: frozenset[str] = frozenset(),
                secrets: bool = False) -> list[RenderedFile]:
    """Every file ofactl manages on host `name` (drained nodes get `down` in nginx)."""
    d = _check_drained(inv, drained)
    host = inv.host(name)
    if isinstance(host, Node):
        return _node_files(inv, host, secrets)
    return _lb_files(inv, host, d, secrets)


def render_all(inv: Inventory, *, drained: frozenset[str] = frozenset(),
               secrets: bool = False) -> dict[str, list[RenderedFile]]:
    """render_host for every host, keyed by host name, in inventory order."""
    return {h.name: render_host(inv, h.name, drained=drained, secrets=secrets)
            for h in inv.hosts}


def render_nginx(inv: Inventory, lb: LBHost | str, drained: Iterable[str] = frozenset()
                 ) -> RenderedFile:
    """Only the nginx.conf of one LB (rolling restarts re-render it with nodes drained)."""
    name = lb if isinstance(lb, str) else lb.name
    files = render_host(inv, name, drained=frozenset(drained), secrets=False)
    for f in files:
        if f.dest == NGINX_CONF:
            return f
    raise UsageError(f"{inv.path}: '{name}' is not a load balancer",
                     hint="pick one of: " + ", ".join(x.name for x in inv.lbs))


def validation_argv(rendered_file: RenderedFile, path_on_host: str) -> tuple[str, ...] | None:
    """The command that checks a file at path_on_host before it replaces the live one.

    None for files without a checker (env files, token, JSON, keepalived's defaults file).
    """
    dest = rendered_file.dest
    if dest == NGINX_CONF or dest.endswith(".conf") and dest.startswith("/etc/nginx/"):
        return ("nginx", "-t", "-q", "-c", path_on_host)
    if dest == KEEPALIVED_CONF:
        return ("keepalived", "-t", "-f", path_on_host)
    if dest.endswith(".service"):
        return ("systemd-analyze", "verify", path_on_host)
    if dest == PROM_CONF:
        return ("promtool", "check", "config", path_on_host)
    if dest == PROM_RULES:
        return ("promtool", "check", "rules", path_on_host)
    return None


__all__ = [
    "BANNER",
    "PLACEHOLDER",
    "RenderedFile",
    "render_all",
    "render_host",
    "render_nginx",
    "render_template",
    "validation_argv",
]
