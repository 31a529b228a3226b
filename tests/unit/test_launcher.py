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


def test_engine_args_from_the_command_line_take_json_values_and_refuse_malformed_pairs():
    from client.cli import _engine_args

    assert _engine_args(["dtype=float32", "max_num_seqs=32", "enforce_eager=false", "model=a=b"]) == {
        "dtype": "float32", "max_num_seqs": 32, "enforce_eager": False, "model": "a=b"}
    for bad in ("dtype", "=float32"):
        with pytest.raises(SystemExit, match="KEY=VALUE"):
            _engine_args([bad])


def test_engine_overrides_reach_the_copied_model_json_and_the_printed_settings(tmp_path, monkeypatch):
    """What `dynasor serve --engine-arg` sets is what policy loads, and what it prints, without
    touching the checked-in model.json."""
    import json
    import subprocess
    from types import SimpleNamespace

    from serving import launcher

    started = {}

    class FakePopen:  # stands in for tritonserver only: this test reads the repository it would get
        def __init__(self, cmd, **kwargs):
            started["cmd"] = cmd
            self.pid = 0

    monkeypatch.setattr(launcher, "subprocess", SimpleNamespace(Popen=FakePopen, STDOUT=subprocess.STDOUT))
    monkeypatch.setattr(launcher, "_backend_dir", lambda run_dir: run_dir / "backends")
    before = (MODEL_REPOSITORY / "policy" / "1" / "model.json").read_text()
    srv = launcher.start_server(policy_model="smollm2-135m", run_dir=tmp_path,
                                engine_overrides={"dtype": "float32", "enforce_eager": False})
    copied = json.loads((tmp_path / "model_repository" / "policy" / "1" / "model.json").read_text())
    assert copied["dtype"] == "float32" and copied["enforce_eager"] is False
    assert copied["model"].endswith("smollm2-135m")
    assert "dtype=" not in srv.engine_settings and "enforce_eager" not in srv.engine_settings
    assert (MODEL_REPOSITORY / "policy" / "1" / "model.json").read_text() == before


def test_chosen_ports_lie_below_the_ephemeral_range_are_free_and_never_repeat():
    """A port in the kernel's ephemeral range can be given to any outgoing connection while
    Triton loads its models; CI once failed "Address already in use" on such a port."""
    import socket

    from serving.launcher import _ephemeral_start, free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < _ephemeral_start() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
