"""The engine contract on the Triton engines, against the session's real server: the gRPC engine
from here, the BLS engine from inside the server (the `dynasor` model runs the same checks on
request, as `options.self_test` is not a program option: see below)."""
from __future__ import annotations

import asyncio

import pytest

from engines.triton_grpc import GrpcPolicyEngine
from tests.engine_contract import check_engine

pytestmark = pytest.mark.integration


def test_the_grpc_engine_keeps_the_engine_contract(server):
    engine = GrpcPolicyEngine(server.grpc_url)
    try:
        asyncio.run(check_engine(engine, "grpc"))
    finally:
        engine.shutdown()
