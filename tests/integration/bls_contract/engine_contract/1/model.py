"""Runs the engine contract on `BlsEngine` inside the stub and answers "ok" or the failure.

Decoupled, like `dynasor`: `execute` returns at once and the check runs on a thread of its own
(a BLS stream read while `execute` blocks the stub's main thread never delivers its responses)."""
import asyncio
import json
import locale
import sys
import threading
import traceback

locale.setlocale(locale.LC_ALL, "C.UTF-8")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        root = json.loads(args["model_config"])["parameters"]["repo_root"]["string_value"]
        sys.path.insert(0, root)
        self._threads = []

    def execute(self, requests):
        for request in requests:
            tag = pb_utils.get_input_tensor_by_name(request, "tag").as_numpy().reshape(-1)[0].decode()
            thread = threading.Thread(target=self._check, args=(tag, request.get_response_sender()))
            thread.start()
            self._threads.append(thread)
        return None

    def _check(self, tag, sender):
        from engines.triton_bls import STUB_LOCK, BlsEngine
        from tests.engine_contract import check_engine

        engine = BlsEngine()
        try:
            asyncio.run(check_engine(engine, tag))
            result = "ok"
        except BaseException:
            result = traceback.format_exc()
        finally:
            engine.shutdown()
        out = pb_utils.Tensor("result", np.array([result.encode()], dtype=np.object_))
        with STUB_LOCK:
            sender.send(pb_utils.InferenceResponse(output_tensors=[out]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self._threads:
            thread.join(timeout=60)
