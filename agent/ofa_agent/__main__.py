"""`python -m ofa_agent`: parse settings, build the app, serve until drained."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Sequence

from .config import ConfigError, load_settings

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def one_malloc_arena() -> bool:
    """Make every thread allocate from glibc's main arena, unless MALLOC_ARENA_MAX is set.

    The forward runs on a worker thread; with glibc's default per-thread arenas its large
    activation buffers come from a secondary arena (64 MiB heaps) and are mmap'ed and faulted in
    on every forward: the large preset's forward took 2.91 s on the worker thread against 2.37 s
    on the main thread, and 2.39 s on the worker with one arena (2 cores, bench/README.md). Must
    run before other threads start. Returns True when applied.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(M_ARENA_MAX, 1))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent; returns the exit status (2 for a bad setting)."""
    one_malloc_arena()
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
