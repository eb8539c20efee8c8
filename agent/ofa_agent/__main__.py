"""`python -m ofa_agent`: parse settings, build the app, serve until drained."""

from __future__ import annotations

import logging
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
    # The forward thread releases the GIL inside every torch op and must win it back from the
    # threads parsing and preprocessing requests; a shorter switch interval bounds that wait.
    sys.setswitchinterval(settings.switch_interval_ms / 1000.0)
    from .app import create_app
    from .server import serve

    return serve(create_app(settings))


if __name__ == "__main__":
    sys.exit(main())
