"""Run the real agent server (uvicorn, signals, drain) on the fake engine: tests only.

    python tests/agent/fake_agent.py --model-dir DIR --port 0 ...   (env FAKE_DELAY_S)
Prints "PORT <n>" once listening.
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from agent_fakes import FakeEngine, factory  # noqa: E402
from ofa_agent.app import create_app  # noqa: E402
from ofa_agent.config import load_settings  # noqa: E402
from ofa_agent.server import serve  # noqa: E402


def main() -> None:
    settings = load_settings(sys.argv[1:])
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    engine = FakeEngine(delay_s=float(os.environ.get("FAKE_DELAY_S", "0.05")),
                        load_s=float(os.environ.get("FAKE_LOAD_S", "0")))
    app = create_app(settings, factory(engine))
    sys.exit(serve(app))


if __name__ == "__main__":
    main()
