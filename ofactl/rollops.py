"""The fleet operations of a rolling restart, over the transport (the I/O half of rolling.py).

Everything goes through `ofactl.transport` (SSH): LB configs are rendered locally with the batch
marked `down`, uploaded, validated with `nginx -t` (the previous file is put back when that
fails) and reloaded; agents are probed with curl on the node itself, so the control machine
needs nothing but SSH.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ofactl import commands, facts
from ofactl.commands import q
from ofactl.errors import OperationError, TransportError
from ofactl.transport import Transport

AGENT_UNIT = "ofa-agent"
TOKEN_FILE = "/etc/ofa-agent/token"
SMOKE_TEXT = "there is a small square"
_PROBE_TIMEOUT = 10.0


def tiny_png(width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (40, 120, 200)
             ) -> bytes:
    """A valid solid-colour PNG, built by hand (no Pillow on the control machine)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    raw = row * height
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def predict_body(text: str = SMOKE_TEXT) -> dict[str, str]:
    """The JSON body of one /v1/predict request (a tiny PNG and a hypothesis)."""
    return {"image": base64.b64encode(tiny_png()).decode(), "text": text}


def smoke_cmd(port: int, *, with_token: bool, timeout_s: float = 30.0) -> str:
    """curl on the node: POST the body from stdin to its own agent; body + final code line.

    The token is read on the node (never sent from here, never in our command text)."""
    auth = f' -H "Authorization: Bearer $(cat {q(TOKEN_FILE)})"' if with_token else ""
    return (f"curl -sS --max-time {timeout_s:g} -w '\\n%{{http_code}}' "
            f"-H 'Content-Type: application/json'{auth} --data-binary @- "
            f"http://127.0.0.1:{port}/v1/predict")


def lb_conns_cmd(address: str, port: int) -> tuple[str, ...]:
    """`ss` listing of established TCP connections from this LB to a node's agent."""
    return ("ss", "-Htn", "state", "established", "dst", f"{address}:{port}")


def count_lines(text: str) -> int:
    """Number of non-empty lines."""
    return sum(1 for line in text.splitlines() if line.strip())


class FleetOps:
    """RollingOps over real hosts: one transport per host, created on first use."""

    def __init__(
        self,
        inv: Any,
        factory: Callable[[Any], Transport],
        *,
        push_lbs: Callable[[frozenset[str]], None] | None = None,
        poll_s: float = 0.25,
    ) -> None:
        self.inv = inv
        self.factory = factory
        self._transports: dict[str, Transport] = {}
        self._lock = threading.Lock()
        self._push_lbs = push_lbs
        self.poll_s = poll_s

    # -- plumbing
    def t(self, name: str) -> Transport:
        """The transport of host `name` (cached)."""
        with self._lock:
            if name not in self._transports:
                self._transports[name] = self.factory(self.inv.host(name))
            return self._transports[name]

    def close(self) -> None:
        """Close every transport opened."""
        for t in self._transports.values():
            t.close()
        self._transports.clear()

    def _node(self, name: str) -> Any:
        return self.inv.node(name)

    def _ready(self, name: str) -> tuple[int, str]:
        node = self._node(name)
        url = f"http://127.0.0.1:{node.agent.port}/v2/health/ready"
        try:
            res = self.t(name).run(commands.curl_status(url, 2.0), timeout=_PROBE_TIMEOUT,
                                   readonly=True, check=False)
        except TransportError as err:
            return 0, str(err)
        return facts.parse_curl_status(res.stdout)

    def _parallel(self, names: Sequence[str], fn: Callable[[str], Any]) -> dict[str, Any]:
        if not names:
            return {}
        with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
            return dict(zip(names, pool.map(fn, names), strict=True))

    # -- RollingOps
    def ready_nodes(self, nodes: Sequence[str]) -> dict[str, bool]:
        """Which nodes answer 200 on /v2/health/ready."""
        return {n: code == 200 for n, (code, _) in self._parallel(nodes, self._ready).items()}

    def set_drained(self, drained: frozenset[str]) -> None:
        """Every LB serves the fleet with exactly `drained` marked down."""
        if self._push_lbs is not None:
            self._push_lbs(drained)
            return
        lbs = [lb.name for lb in self.inv.lbs]
        errors = [e for e in self._parallel(lbs, lambda n: self._push_one(n, drained)).values()
                  if e]
        if errors:
            raise OperationError("; ".join(errors),
                                 hint="fix the LB, then rerun (healthy nodes stay in service)")

    def _push_one(self, lb: str, drained: frozenset[str]) -> str | None:
        from ofactl.render import render_host  # the inventory/render engineer's renderer

        t = self.t(lb)
        files = [f for f in render_host(self.inv, lb, drained=drained)
                 if str(f.dest).startswith("/etc/nginx/")]
        if t.dry_run:
            for f in files:
                t.put(f.content.encode() if isinstance(f.content, str) else f.content,
                      str(f.dest), mode=f.mode)
            t.run(commands.nginx_test(), timeout=30)
            t.run(commands.nginx_reload(), timeout=30)
            return None
        changed = []
        for f in files:
            data = f.content.encode() if isinstance(f.content, str) else f.content
            if t.get(str(f.dest), timeout=20) == data:
                continue
            t.run(commands.backup(str(f.dest)), timeout=20)
            t.put(data, str(f.dest), mode=f.mode, timeout=30)
            changed.append(str(f.dest))
        if not changed:
            return None
        test = t.run(commands.nginx_test(), timeout=30, check=False)
        if not test.ok:
            for dest in changed:
                t.run(commands.restore(dest), timeout=20, check=False)
            return (f"{lb}: nginx -t refused the drained upstream, previous config kept: "
                    f"{test.stderr.strip()[-300:]}")
        t.run(commands.nginx_reload(), timeout=30)
        return None

    def wait_idle(self, nodes: Sequence[str], timeout_s: float) -> dict[str, str]:
        """Poll until each node reports inflight 0 and no LB holds a connection to it."""
        deadline = time.monotonic() + timeout_s
        busy: dict[str, str] = {}
        lbs = [lb.name for lb in self.inv.lbs]
        while True:
            busy = {}
            infos = self._parallel(list(nodes), self._inflight)
            for n, inflight in infos.items():
                if inflight:
                    busy[n] = f"{inflight} request(s) in flight"
            conns = self._parallel(lbs, lambda lb: self._lb_conns(lb, nodes))
            for lb, per_node in conns.items():
                for n, c in per_node.items():
                    if c:
                        busy[n] = (busy.get(n, "") + ("; " if n in busy else "")
                                   + f"{c} connection(s) from {lb}")
            if not busy or time.monotonic() >= deadline:
                return busy
            time.sleep(self.poll_s)

    def _inflight(self, name: str) -> int:
        node = self._node(name)
        url = f"http://127.0.0.1:{node.agent.port}/v1/info"
        try:
            res = self.t(name).run(commands.curl_status(url, 2.0), timeout=_PROBE_TIMEOUT,
                                   readonly=True, check=False)
        except TransportError:
            return 0  # an agent that does not answer has nothing in flight we could wait for
        code, body = facts.parse_curl_status(res.stdout)
        if code != 200:
            return 0
        try:
            return int(facts.parse_info(body).get("inflight") or 0)
        except (TypeError, ValueError):
            return 0

    def _lb_conns(self, lb: str, nodes: Sequence[str]) -> dict[str, int]:
        out = {}
        for n in nodes:
            node = self._node(n)
            try:
                res = self.t(lb).run(lb_conns_cmd(node.address, node.agent.port),
                                     timeout=_PROBE_TIMEOUT, readonly=True, check=False)
                out[n] = count_lines(res.stdout) if res.ok else 0
            except TransportError:
                out[n] = 0
        return out

    def restart(self, node: str) -> None:
        """`systemctl restart ofa-agent` (the agent drains itself on SIGTERM)."""
        drain = float(self._node(node).agent.drain_timeout_s)
        self.t(node).run(commands.systemctl("restart", AGENT_UNIT), timeout=drain + 60)

    def wait_ready(self, node: str, timeout_s: float) -> None:
        """Poll /v2/health/ready until 200; the error quotes the last answer."""
        deadline = time.monotonic() + timeout_s
        code, body = 0, ""
        while time.monotonic() < deadline:
            code, body = self._ready(node)
            if code == 200:
                return
            time.sleep(0.5)
        raise OperationError(
            f"{node}: not ready after {timeout_s:g} s (last answer: "
            f"{facts.ready_reason(code, body)})",
            hint=f"ofactl status --nodes {node}; journalctl -u {AGENT_UNIT} on the node",
        )

    def smoke(self, node: str) -> None:
        """One real prediction on the node itself; 200 with a JSON answer or an error."""
        n = self._node(node)
        timeout = float(n.agent.request_timeout_s)
        cmd = smoke_cmd(n.agent.port, with_token=bool(getattr(n.agent, "require_token", False)),
                        timeout_s=timeout)
        res = self.t(node).run(["sh", "-c", cmd], timeout=timeout + 15, readonly=True,
                               check=False, stdin=json.dumps(predict_body()).encode())
        code, body = facts.parse_curl_status(res.stdout)
        if code != 200:
            raise OperationError(
                f"{node}: smoke prediction answered {code or 'nothing'}: {body.strip()[:200]}",
                hint=f"curl the node's /v1/predict by hand; journalctl -u {AGENT_UNIT}",
            )

    def evidence(self, node: str) -> dict[str, str]:
        """Journal tail (30 lines) and the readiness answer of a node."""
        code, body = self._ready(node)
        try:
            res = self.t(node).run(commands.journal_tail(AGENT_UNIT, 30), timeout=_PROBE_TIMEOUT,
                                   readonly=True, check=False)
            journal = res.stdout.strip() or res.stderr.strip()
        except TransportError as err:
            journal = str(err)
        return {"ready": facts.ready_reason(code, body), "journal": journal}
