"""Reward model: one score in [0, 1] per candidate (partial) solution of a question.

Mode "judge" (the CPU default) asks the served instruct model, through BLS to `policy`, whether
the solution so far is correct and reads P(yes) / (P(yes) + P(no)) from the first token's top
logprobs: no second engine in memory, and the judge shares `policy`'s prefix cache.
"""
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from reward_request import validate_request
from scheduler_backend.judge import judge_score


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_candidates = int(params.get("max_candidates", "64"))
        self.max_chars = int(params.get("max_chars", "32768"))
        with open(f"{args['model_repository']}/{args['model_version']}/model.json") as f:
            self.settings = json.load(f)
        if self.settings.get("mode", "judge") != "judge":
            raise pb_utils.TritonModelException(f"model.json mode: only 'judge' is built, got {self.settings.get('mode')!r}")
        workers = int(params.get("max_concurrent_requests", "32"))
        self._requests = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward-req")
        self._judges = ThreadPoolExecutor(max_workers=workers * 4, thread_name_prefix="reward-judge")

    def execute(self, requests):
        for request in requests:
            self._requests.submit(self._serve, request)
        return None

    def _serve(self, request) -> None:
        sender = request.get_response_sender()
        try:
            question = pb_utils.get_input_tensor_by_name(request, "question").as_numpy().reshape(-1)
            candidates = pb_utils.get_input_tensor_by_name(request, "candidates").as_numpy().reshape(-1)
            q, cands = validate_request(question, candidates, self.max_candidates, self.max_chars)
        except ValueError as e:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        try:
            scores = list(self._judges.map(lambda c: self._judge(q, c), cands))
            out = pb_utils.Tensor("scores", np.array(scores, dtype=np.float32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"reward: judge call failed: {e}")), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _judge(self, question: str, candidate: str) -> float:
        prompt = self.settings["prompt"].format(question=question, candidate=candidate)
        messages = json.dumps([{"role": "user", "content": prompt}])
        sampling = json.dumps({"max_tokens": 1, "temperature": 0.0, "logprobs": 20})
        request = pb_utils.InferenceRequest(
            model_name=self.settings.get("judge_model", "policy"),
            inputs=[
                pb_utils.Tensor("messages", np.array([messages], dtype=np.object_)),
                pb_utils.Tensor("sampling_parameters", np.array([sampling], dtype=np.object_)),
            ],
            requested_output_names=["logprobs"],
        )
        top = None
        for response in request.exec(decoupled=True):
            if response.has_error():
                raise RuntimeError(response.error().message())
            tensor = pb_utils.get_output_tensor_by_name(response, "logprobs")
            if tensor is not None:
                steps = json.loads(tensor.as_numpy().reshape(-1)[0])
                top = steps[0] if steps else {}
        return judge_score(top or {}, self.settings.get("yes_tokens", ["yes"]), self.settings.get("no_tokens", ["no"]))

    def finalize(self):
        self._requests.shutdown(wait=True, cancel_futures=True)
        self._judges.shutdown(wait=True, cancel_futures=True)
