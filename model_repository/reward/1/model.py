"""Reward model: one score in [0, 1] per candidate (partial) solution of a question.

A generative judge, the only mode built: it asks the served instruct model, through BLS to
`policy`, whether the solution so far is correct and reads P(yes) / (P(yes) + P(no)) from the
first token's top logprobs: no second engine in memory, and the judge shares `policy`'s prefix
cache. model.json's `mode` must say "judge"; any other mode is refused at load.
"""
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils
from reward_request import validate_request

from engines.policy_stream import decode_deltas, policy_inputs, policy_outputs
from scheduler_backend.engine import ChatMessage, GenerateCall, SamplingSpec
from scheduler_backend.errors import RequestError
from scheduler_backend.judge import judge_score
from serving.reaper import start_reaper
from serving.triton_model import parameters, send_error


class TritonPythonModel:
    def initialize(self, args):
        self._reaper = start_reaper()  # nothing of this stub outlives it or the server
        params = parameters(args)
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
        except RequestError as e:
            send_error(sender, str(e), pb_utils.TritonError.INVALID_ARG)
            return
        try:
            scores = list(self._judges.map(lambda c: self._judge(q, c), cands))
            out = pb_utils.Tensor("scores", np.array(scores, dtype=np.float32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:
            send_error(sender, f"reward: judge call failed: {e}")

    def _judge(self, question: str, candidate: str) -> float:
        prompt = self.settings["prompt"].format(question=question, candidate=candidate)
        call = GenerateCall("", SamplingSpec(max_tokens=1, temperature=0.0, logprobs=20), messages=(ChatMessage("user", prompt),))
        inputs = {k: v for k, v in policy_inputs(call).items() if k in ("messages", "sampling_parameters")}
        request = pb_utils.InferenceRequest(
            model_name=self.settings.get("judge_model", "policy"),
            inputs=[pb_utils.Tensor(name, np.array([value], dtype=np.object_)) for name, value in inputs.items()],
            requested_output_names=policy_outputs(call),
        )
        top: dict[str, float] = {}
        for response in request.exec(decoupled=True):
            if response.has_error():
                raise RuntimeError(response.error().message())
            outputs = {n: t.as_numpy() for n in policy_outputs(call) if (t := pb_utils.get_output_tensor_by_name(response, n)) is not None}
            for delta in decode_deltas(outputs):
                top = delta.top_logprobs[0] if delta.top_logprobs else top
        return judge_score(top, self.settings.get("yes_tokens", ["yes"]), self.settings.get("no_tokens", ["no"]))

    def finalize(self):
        self._requests.shutdown(wait=True, cancel_futures=True)
        self._judges.shutdown(wait=True, cancel_futures=True)
