"""Shared test plugins: fixtures every test directory may use."""

import sys
from pathlib import Path

# `tests.*` fixture modules must import however pytest is started (pytest or python -m pytest)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

pytest_plugins = [
    "tests.fixtures_lab",
    "tests.fixtures_model",
]
