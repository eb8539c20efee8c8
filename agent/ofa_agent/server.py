"""Process lifecycle on top of uvicorn: startup -> serve -> drain on SIGTERM -> exit in time.

On SIGTERM (or SIGINT) readiness turns 503 at once and the agent keeps accepting and serving
requests (a load balancer may still route a few). Once at least `drain_grace_s` has passed and
nothing is queued or in flight, it stops listening, finishes open connections and exits 0. If
work is still pending at `drain_timeout_s` minus a small reserve, uvicorn's graceful shutdown
gets the rest of the budget and then cancels what is left, so the process always exits within
`drain_timeout_s` of the signal. A second SIGINT forces an immediate exit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from types import FrameType

import uvicorn

from .app import Agent

log = logging.getLogger("ofa_agent.server")

# Time kept back from drain_timeout_s for closing connections, lifespan shutdown and exit.
EXIT_RESERVE_S = 0.5


class AgentServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT starts a drain instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, agent: Agent) -> None:
        super().__init__(config)
        self.agent = agent
        self.drain_started: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: only plain assignments here, no logging.
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self.agent.draining = True
            self.agent.drain_source = "signal"
        elif sig == signal.SIGINT:
            self.force_exit = True
            self.should_exit = True

    def drain_done(self, now: float) -> bool:
        """True when the drain may end: grace passed and idle, or the budget is spent."""
        if self.drain_started is None:
            return False
        s = self.agent.settings
        elapsed = now - self.drain_started
        if elapsed >= s.drain_grace_s and self.agent.pending == 0:
            return True
        return elapsed >= max(0.0, s.drain_timeout_s - EXIT_RESERVE_S)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self.drain_started is None:
            return False
        if not self._drain_logged:
            self._drain_logged = True
            self.agent.drain("signal")
        now = time.monotonic()
        if not self.drain_done(now):
            return False
        left = self.agent.settings.drain_timeout_s - (now - self.drain_started)
        # uvicorn types this as int but only passes it to asyncio.wait_for: a float works.
        self.config.timeout_graceful_shutdown = max(0.1, left - EXIT_RESERVE_S / 2)  # type: ignore[assignment]
        log.info(
            "drain finished after %.1f s (%d pending); closing the listener",
            now - self.drain_started, self.agent.pending,
        )
        self.should_exit = True
        return True


def build_server(agent: Agent, app: object) -> AgentServer:
    """The uvicorn config for the agent: our logging, no access log, lifespan on."""
    s = agent.settings
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=s.host,
        port=s.port,
        lifespan="on",
        log_config=None,
        access_log=False,
        log_level=s.log_level.lower(),
        timeout_graceful_shutdown=int(max(1, s.drain_timeout_s)),
        server_header=False,
    )
    return AgentServer(config, agent)


def serve(app: object) -> int:
    """Serve the app built by create_app until drained; returns the exit status."""
    agent: Agent = app.state.agent  # type: ignore[attr-defined]
    server = build_server(agent, app)
    server.run()
    if agent.batcher is not None and agent.batcher.worker_busy:
        # A forward is still running in the worker thread after the drain budget was spent;
        # interpreter exit would join that thread, so leave now to keep the drain bound.
        log.warning("exiting with a forward still running (drain timeout reached)")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
