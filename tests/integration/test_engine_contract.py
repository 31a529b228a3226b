"""The engine contract on the Triton engines, against the session's real server: the gRPC engine
from here, the BLS engine from inside the server (BLS exists only there), by the test-only
`engine_contract` model that the fixture adds to the repository."""
from __future__ import annotations

import asyncio

import pytest

from engines.grpc_stream import StreamCall
from engines.triton_grpc import GrpcPolicyEngine
from tests.engine_contract import check_engine

pytestmark = pytest.mark.integration


def test_the_grpc_engine_keeps_the_engine_contract(server):
    engine = GrpcPolicyEngine(server.grpc_url)
    try:
        asyncio.run(check_engine(engine, "grpc"))
    finally:
        engine.shutdown()


def test_the_bls_engine_keeps_the_engine_contract(server):
    responses = StreamCall(server.grpc_url, "engine_contract", {"tag": "bls"}, timeout_s=300).collect()
    result = responses[-1].outputs["result"].reshape(-1)[0].decode()
    assert result == "ok", result
