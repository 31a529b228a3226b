"""Reward model: one score in [0, 1] per candidate (partial) solution of a question, and for a
process reward model each step's score (`step_scores`, flattened; `num_steps` per candidate).

model.json `mode` (scheduler_backend/reward_steps.py):
- `judge`: a generative judge asks the served instruct model, through BLS to `policy`, whether the
  solution so far is correct and reads P(yes) / (P(yes) + P(no)) from the first token's top
  logprobs: no second engine in memory, and the judge shares `policy`'s prefix cache;
- `prm` / `orm`: a reward model on its own vLLM engine (the pooling runner), hosted as `policy`'s
  is (serving/engine_host.py: machine-aware settings, rebuilt when it dies, readiness gauge).
Bad settings are refused at load with the field named.
"""
import asyncio
import dataclasses
import json
import locale
import os
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor

# The stub's embedded interpreter prefers ASCII; torch reads UTF-8 templates on import (pitfall 5).
locale.setlocale(locale.LC_ALL, "C.UTF-8")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from reward_request import validate_request  # noqa: E402

from engines.policy_stream import decode_deltas, policy_inputs, policy_outputs  # noqa: E402
from engines.vllm_reward import PoolingReward, RewardScore, load_tokenizer, pooling_engine_args  # noqa: E402
from scheduler_backend.engine import ChatMessage, GenerateCall, SamplingSpec  # noqa: E402
from scheduler_backend.errors import RequestError  # noqa: E402
from scheduler_backend.judge import judge_score  # noqa: E402
from scheduler_backend.reward_steps import RewardSettingsError, check_settings  # noqa: E402
from serving.engine_host import ENGINE_METRICS, EngineHost, resolve_model_path  # noqa: E402
from serving.reaper import start_reaper  # noqa: E402
from serving.triton_model import Metrics, parameters, send_error  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self._reaper = start_reaper()  # nothing of this stub outlives it or the server
        params = parameters(args)
        self.max_candidates = int(params.get("max_candidates", "64"))
        self.max_chars = int(params.get("max_chars", "32768"))
        with open(f"{args['model_repository']}/{args['model_version']}/model.json") as f:
            doc = json.load(f)
        try:
            self.settings = check_settings(doc)
        except RewardSettingsError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        workers = int(params.get("max_concurrent_requests", "32"))
        self._requests = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward-req")
        self._judges = ThreadPoolExecutor(max_workers=workers * 4, thread_name_prefix="reward-judge")
        self.host = None
        if self.settings.mode != "judge":
            self._start_engine(args, params)

    def _start_engine(self, args, params) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", params.get("cpu_kvcache_space_gib", "1"))
        if self.settings.cuda_visible_devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.settings.cuda_visible_devices  # read by the engine it spawns
        engine_args = dict(self.settings.engine)
        engine_args["model"] = resolve_model_path(engine_args["model"], args["model_repository"])
        self.settings = dataclasses.replace(self.settings, engine=engine_args)
        try:
            tokenizer = load_tokenizer(engine_args)
            pooling_args = pooling_engine_args(self.settings, tokenizer)
        except RewardSettingsError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        self.scorer = None
        self.host = EngineHost(
            "reward", pooling_args, Metrics(args["model_name"], ENGINE_METRICS),
            restart=params.get("restart_dead_engine", "true").lower() == "true",
            give_up=lambda: pb_utils.unload_model(args["model_name"]),
            on_ready=lambda engine: setattr(self, "scorer", PoolingReward(self.settings, engine, tokenizer)),
        )

    def execute(self, requests):
        for request in requests:
            if self.host is None:
                self._requests.submit(self._serve, request)
            else:
                self.host.submit(self._serve_pooling(request))
        return None

    def _read(self, request, sender) -> tuple[str, list[str]] | None:
        """The question and candidates, or None once a refusal naming the field went out."""
        question = pb_utils.get_input_tensor_by_name(request, "question").as_numpy().reshape(-1)
        candidates = pb_utils.get_input_tensor_by_name(request, "candidates").as_numpy().reshape(-1)
        try:
            return validate_request(question, candidates, self.max_candidates, self.max_chars)
        except RequestError as e:
            send_error(sender, str(e), pb_utils.TritonError.INVALID_ARG)
            return None

    async def _serve_pooling(self, request) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        sender = request.get_response_sender()
        read = self._read(request, sender)
        if read is None:
            return
        q, cands = read
        engine, scorer = self.host.engine, self.scorer
        if engine is None or scorer is None or scorer.engine is not engine:
            send_error(sender, "reward engine is restarting; retry shortly", pb_utils.TritonError.UNAVAILABLE)
            return
        request_id = request.request_id() or uuid.uuid4().hex
        self.host.in_flight[request_id] = asyncio.current_task()
        try:
            sender.send(_response(await scorer.score(q, cands, request_id)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            self.host.metrics.count("dynasor_engine_requests_total", {"outcome": "finished"})
        except RequestError as e:
            self.host.metrics.count("dynasor_engine_requests_total", {"outcome": "invalid"})
            send_error(sender, str(e), pb_utils.TritonError.INVALID_ARG)
        except asyncio.CancelledError:
            send_error(sender, "request was cancelled", pb_utils.TritonError.CANCELLED)
        except EngineDeadError as e:
            self.host.engine_died(engine)
            self.host.metrics.count("dynasor_engine_requests_total", {"outcome": "engine_dead"})
            send_error(sender, f"reward engine died while scoring this request: {e}", pb_utils.TritonError.UNAVAILABLE)
        except Exception as e:
            pb_utils.Logger.log_error(f"[reward] scoring failed: {traceback.format_exc()}")
            self.host.metrics.count("dynasor_engine_requests_total", {"outcome": "error"})
            send_error(sender, f"reward: scoring failed: {type(e).__name__}: {e}")
        finally:
            self.host.in_flight.pop(request_id, None)

    def _serve(self, request) -> None:
        sender = request.get_response_sender()
        read = self._read(request, sender)
        if read is None:
            return
        q, cands = read
        try:
            scores = [RewardScore(s) for s in self._judges.map(lambda c: self._judge(q, c), cands)]
            sender.send(_response(scores), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:
            send_error(sender, f"reward: judge call failed: {e}")

    def _judge(self, question: str, candidate: str) -> float:
        judge = self.settings.judge
        prompt = judge["prompt"].format(question=question, candidate=candidate)
        call = GenerateCall("", SamplingSpec(max_tokens=1, temperature=0.0, logprobs=20), messages=(ChatMessage("user", prompt),))
        inputs = {k: v for k, v in policy_inputs(call).items() if k in ("messages", "sampling_parameters")}
        request = pb_utils.InferenceRequest(
            model_name=judge.get("judge_model", "policy"),
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
        return judge_score(top, judge.get("yes_tokens", ["yes"]), judge.get("no_tokens", ["no"]))

    def finalize(self):
        self._requests.shutdown(wait=True, cancel_futures=True)
        self._judges.shutdown(wait=True, cancel_futures=True)
        if self.host is not None:
            self.host.stop()


def _response(scores: list[RewardScore]):
    """Scores, and step scores flattened with their count per candidate (0 where a mode has none)."""
    steps = [x for s in scores for x in s.steps]
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("scores", np.array([s.score for s in scores], dtype=np.float32)),
        pb_utils.Tensor("step_scores", np.array(steps, dtype=np.float32)),
        pb_utils.Tensor("num_steps", np.array([len(s.steps) for s in scores], dtype=np.int32)),
    ])
