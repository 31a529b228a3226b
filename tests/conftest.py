"""Shared by every test: the model the integration tests serve, where the data lives, and the order
tests run in (the integration server fixture is in tests/integration/conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

TEST_MODEL = os.environ.get("DYNASOR_TEST_MODEL", "smollm2-135m")
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Tests that kill the engine run last, so every other test sees a healthy server."""
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)

