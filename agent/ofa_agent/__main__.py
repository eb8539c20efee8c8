"""`python -m ofa_agent`: parse settings, build the app, serve until drained."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .config import ConfigError, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent; returns the exit status (2 for a bad setting)."""
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        print(f"ofa-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .app import create_app
    from .server import build_server

    app = create_app(settings)
    agent = app.state.agent
    server = build_server(agent, app)
    server.run()
    if agent.batcher is not None and agent.batcher.running:
        # A forward is still running in the worker thread after the drain budget was spent;
        # interpreter exit would join that thread, so leave now to keep the drain bound.
        logging.getLogger("ofa_agent").warning("exiting with a forward still running")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
