"""Runs the engine contract on `BlsEngine` inside the stub and answers "ok" or the failure."""
import asyncio
import json
import locale
import sys
import traceback

locale.setlocale(locale.LC_ALL, "C.UTF-8")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        root = json.loads(args["model_config"])["parameters"]["repo_root"]["string_value"]
        sys.path.insert(0, root)

    def execute(self, requests):
        from engines.triton_bls import BlsEngine
        from tests.engine_contract import check_engine

        responses = []
        for request in requests:
            tag = pb_utils.get_input_tensor_by_name(request, "tag").as_numpy().reshape(-1)[0].decode()
            engine = BlsEngine()
            try:
                asyncio.run(check_engine(engine, tag))
                result = "ok"
            except BaseException:
                result = traceback.format_exc()
            finally:
                engine.shutdown()
            out = pb_utils.Tensor("result", np.array([result.encode()], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
