"""Bounded open-loop prediction load: `rate` requests per second for `duration` seconds.

Every request has its own timeout and is recorded with its send time, latency and outcome kind
(ok / http_<status> / connect_refused / connect_error / timeout / reset / error). The number of
requests is fixed up front (rate × duration) and the whole run is bounded in time.
"""

from __future__ import annotations

import errno
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from ofactl.drill.metrics import OK, RequestRecord

MAX_REQUESTS = 100_000
MAX_WORKERS = 256


@dataclass(frozen=True)
class Payload:
    """One prediction request: path, JSON body and headers (the token stays in here only)."""

    path: str
    json: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Payload(path={self.path!r}, headers=[REDACTED])"


def classify(exc: BaseException) -> str:
    """Map an httpx exception to an outcome kind."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    text = repr(exc).lower()
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == \
                errno.ECONNREFUSED:
            return "connect_refused"
        if isinstance(cause, ConnectionResetError) or getattr(cause, "errno", None) == \
                errno.ECONNRESET:
            return "reset"
        cause = cause.__cause__ or cause.__context__
    if "refused" in text:
        return "connect_refused"
    if "reset" in text or isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return "reset"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    return "error"


def outcome_of(status: int) -> str:
    """'ok' for 200, else http_<status>."""
    return OK if status == 200 else f"http_{status}"


class LoadGenerator:
    """Sends a fixed schedule of requests from a thread pool; `stop()` ends it early."""

    def __init__(
        self,
        base_url: str,
        payload: Payload,
        *,
        rate: float,
        duration: float,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        t0: float | None = None,
    ) -> None:
        if rate <= 0 or duration <= 0 or timeout <= 0:
            raise ValueError("rate, duration and timeout must be > 0")
        self.count = min(MAX_REQUESTS, max(1, math.floor(rate * duration)))
        self.rate = rate
        self.duration = duration
        self.timeout = timeout
        self.base_url = base_url.rstrip("/")
        self.payload = payload
        self.clock = clock
        self.t0 = clock() if t0 is None else t0
        self.records: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        workers = min(MAX_WORKERS, max(4, math.ceil(rate * (timeout + 0.5)) + 4))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="drill-load")
        # a fresh connection per request: a client that reconnects sees the VIP move
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=workers, max_keepalive_connections=0),
            trust_env=False,
        )

    def _one(self, planned: float) -> None:
        sent = self.clock()
        try:
            resp = self._client.post(self.base_url + self.payload.path, json=self.payload.json,
                                     headers=self.payload.headers)
            kind = outcome_of(resp.status_code)
        except Exception as exc:  # noqa: BLE001 - every failure is a measured outcome
            kind = classify(exc)
        latency = self.clock() - sent
        with self._lock:
            self.records.append(RequestRecord(t=sent - self.t0, latency=latency, kind=kind))

    def _dispatch(self) -> None:
        for i in range(self.count):
            due = self.t0 + i / self.rate
            delay = due - self.clock()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            self._pool.submit(self._one, due)

    def start(self) -> None:
        """Begin sending in the background."""
        self._thread = threading.Thread(target=self._dispatch, name="drill-dispatch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send no further requests (those in flight finish within their timeout)."""
        self._stop.set()

    def join(self, extra: float = 5.0) -> list[RequestRecord]:
        """Wait for the schedule and every request (bounded), then return sorted records."""
        if self._thread is not None:
            self._thread.join(max(0.0, self.t0 + self.duration + extra - self.clock()))
        self._stop.set()
        # every request sent is recorded: wait for all (each is bounded by its timeout)
        self._pool.shutdown(wait=True)
        self._client.close()
        with self._lock:
            return sorted(self.records, key=lambda r: r.t)
