"""Shared by every test: the model the integration tests serve and the order
tests run in (the integration server fixture is in tests/integration/conftest.py)."""
from __future__ import annotations

import os

TEST_MODEL = os.environ.get("DYNASOR_TEST_MODEL", "smollm2-135m")


def pytest_collection_modifyitems(config, items):
    """Tests that kill the engine run last, so every other test sees a healthy server."""
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)

