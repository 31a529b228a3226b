"""The engine contract on the Triton engines, against the session's real server: the gRPC engine
from here, the BLS engine from inside the server (BLS exists only there), by the test-only
`engine_contract` model that the fixture adds to the repository."""
from __future__ import annotations

import asyncio

import numpy as np
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


def test_the_bls_engine_keeps_the_engine_contract(server):
    from tritonclient.grpc import InferenceServerClient, InferInput

    client = InferenceServerClient(server.grpc_url)
    tag = InferInput("tag", [1], "BYTES")
    tag.set_data_from_numpy(np.array([b"bls"], dtype=np.object_))
    result = client.infer("engine_contract", [tag], client_timeout=300).as_numpy("result")[0].decode()
    assert result == "ok", result
