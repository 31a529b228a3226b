"""Launcher pieces that need no server: config parameter overrides on a copied repository."""
from __future__ import annotations

import shutil

import pytest

from serving.launcher import MODEL_REPOSITORY, _set_parameters


def test_parameter_overrides_change_only_the_named_values(tmp_path):
    config = tmp_path / "config.pbtxt"
    shutil.copy(MODEL_REPOSITORY / "dynasor" / "config.pbtxt", config)
    before = config.read_text()
    _set_parameters(config, {"scheduling_policy": "fcfs", "max_running_programs": "3"})
    after = config.read_text()
    assert '{ key: "scheduling_policy", value: { string_value: "fcfs" } }' in after
    assert '{ key: "max_running_programs", value: { string_value: "3" } }' in after
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 2
    with pytest.raises(KeyError, match="no_such_key"):
        _set_parameters(config, {"no_such_key": "1"})
