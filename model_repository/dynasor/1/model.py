"""Triton glue for the reasoning programs: one request = one program, run by the shared
scheduler_backend runner over calls to `policy` and `reward` (the `engine` parameter: this
server's own gRPC endpoint by default, or BLS), progress streamed back.

All logic lives in scheduler_backend; this file only parses requests at the door, sends
responses, watches for cancellation and exports metrics. The runner lives on an asyncio loop in
its own thread; `execute` only hands requests to that loop.
"""
import asyncio
import locale
import threading
import time
import traceback
import uuid
from pathlib import Path

locale.setlocale(locale.LC_ALL, "C.UTF-8")  # the stub's interpreter prefers ASCII (pitfall 5)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from program_request import CancelRequest, DrainRequest, default_allocation, parse_program_request  # noqa: E402

from engines.triton_bls import STUB_LOCK, BlsEngine  # noqa: E402
from scheduler_backend.capacity import ConcurrencyController  # noqa: E402
from scheduler_backend.engine import Engine  # noqa: E402
from scheduler_backend.errors import RETRY_ELSEWHERE, RequestError  # noqa: E402
from scheduler_backend.program import ProgramState, StopReason  # noqa: E402
from scheduler_backend.quality import QualityFloor  # noqa: E402
from scheduler_backend.registry import Limits, load_plugins  # noqa: E402
from scheduler_backend.runner import ProgramRunner  # noqa: E402
from scheduler_backend.sandbox import default_sandbox  # noqa: E402
from scheduler_backend.scheduler import Scheduler, SchedulingPolicy  # noqa: E402
from serving.agent_check import agent_reply, agent_settings, runner_weight, serve_agent  # noqa: E402
from serving.door_json import dump_json, parse_json  # noqa: E402
from serving.reaper import start_reaper  # noqa: E402
from serving.triton_model import Metrics, parameters, scalar_input, send_error, text  # noqa: E402

_CERTAINDEX_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]


def _report_sandbox() -> None:
    """Say at load how the `code` program's sandbox isolates model-written code, or why it cannot."""
    try:
        box = default_sandbox()
    except RuntimeError as e:
        pb_utils.Logger.log_error(f"[dynasor] code programs cannot run: {e}")
        return
    if box.warning:
        pb_utils.Logger.log_warn(f"[dynasor] {box.warning}")
    else:
        pb_utils.Logger.log_info(f"[dynasor] code sandbox: {box.isolation}, limits {box.limits}")


class TritonPythonModel:
    def initialize(self, args):
        self._reaper = start_reaper()  # nothing of this stub outlives it or the server
        p = parameters(args)
        self.default_program = p.get("default_program", "self-consistency")
        self.limits = Limits(
            max_budget=int(p.get("max_budget", "64")),
            max_tokens=int(p.get("max_tokens", "2048")),
            max_question_chars=int(p.get("max_question_chars", "16384")),
            max_program_tokens=int(p.get("max_program_tokens", "65536")),
        )
        self.max_programs_in_flight = int(p.get("max_programs_in_flight", "256"))
        self.max_programs_per_client = int(p.get("max_programs_per_client", "32"))
        self._per_client: dict[str, int] = {}
        self._programs: dict[str, str] = {}  # program id -> runner pid, for cancel_program
        self.max_deadline_s = float(p.get("max_deadline_s", "3600"))
        try:
            self.default_floor = QualityFloor(int(p.get("quality_floor", "0")), p.get("floor_action", "degrade"),
                                              _flag(p.get("floor_counts_probed", "false"), "floor_counts_probed"))
        except ValueError as e:
            raise pb_utils.TritonModelException(f"parameters.{e}") from None
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.calibration_dir = version_dir / p.get("calibration_dir", "calibrations")
        try:
            self.default_allocation = default_allocation(p.get("default_allocation", ""), self.calibration_dir)
        except RequestError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        plugins = [x.strip() for x in p.get("plugins", "").split(",") if x.strip()]
        if plugins:
            load_plugins(plugins)
        _report_sandbox()
        calls = int(p.get("max_concurrent_bls_calls", "256"))
        engine = p.get("engine", "grpc")
        if engine == "grpc":
            from engines.triton_grpc import GrpcPolicyEngine

            self.engine: Engine = GrpcPolicyEngine(p.get("policy_grpc_url", "127.0.0.1:8001"), calls)
        elif engine == "bls":
            self.engine = BlsEngine(p.get("policy_model", "policy"), p.get("reward_model", "reward"), calls)
        else:
            raise pb_utils.TritonModelException(f"parameters.engine: 'grpc' or 'bls', got {engine!r}")
        max_running, concurrency = _max_running(p)
        scheduler = Scheduler(max_running=max_running, aging_per_s=float(p.get("aging_per_s", "50")),
                              deadline_margin_s=float(p.get("deadline_margin_s", "2")),
                              policy=SchedulingPolicy(p.get("scheduling_policy", "sjf")))
        self.runner = ProgramRunner(self.engine, scheduler, concurrency=concurrency, admission=p.get("admission", "all"),
                                    probe_s=float(p.get("deadline_probe_s", "1.0")))
        self.metrics = Metrics(args["model_name"], _METRICS)
        self.in_flight = self.metrics.metric("dynasor_programs_in_flight")
        self.max_running = self.metrics.metric("dynasor_max_running_programs")
        self.max_running.set(scheduler.max_running)
        self.draining = self.metrics.metric("dynasor_draining")
        self.draining.set(0)
        self._drain_end: float | None = None  # loop time at which a drain's grace ends
        self._drain_timer: asyncio.TimerHandle | None = None
        self.logger = pb_utils.Logger
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dynasor-loop", daemon=True)
        self._thread.start()
        self._tasks: set = set()
        asyncio.run_coroutine_threadsafe(self._export_load(), self._loop)
        self._start_agent(p)

    def _start_agent(self, p: dict) -> None:
        """HAProxy's agent check on `agent_port`: "drain" while draining, else a weight from the
        predicted backlog (serving/agent_check.py)."""
        self._agent_server = None
        try:
            agent = agent_settings(p)
        except ValueError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        if agent is None:
            return

        def reply() -> str:
            return agent_reply(self._drain_end is not None, runner_weight(self.runner, agent.horizon_s))

        try:
            self._agent_server = asyncio.run_coroutine_threadsafe(serve_agent(agent.address, agent.port, reply), self._loop).result(timeout=10)
        except OSError as e:
            raise pb_utils.TritonModelException(f"parameters.agent_port: cannot listen on {agent.address}:{agent.port}: {e}") from None
        self.logger.log_info(f"[dynasor] HAProxy agent check on {agent.address}:{agent.port}")

    async def _export_load(self) -> None:
        """A replica's load for a balancer and an autoscaler, once a second: programs running and
        queued, their predicted remaining tokens, and the engine's tokens/s."""
        gauges = {name: self.metrics.metric(name) for name in
                  ("dynasor_programs_running", "dynasor_programs_queued", "dynasor_predicted_remaining_tokens",
                   "dynasor_engine_tokens_per_second")}
        while True:
            scheduler = self.runner.scheduler
            values = {"dynasor_programs_running": scheduler.running, "dynasor_programs_queued": scheduler.queued,
                      "dynasor_predicted_remaining_tokens": scheduler.total_work(),
                      "dynasor_engine_tokens_per_second": self.runner.throughput.rate or 0.0}
            with STUB_LOCK:
                for name, value in values.items():
                    gauges[name].set(float(value))
            await asyncio.sleep(1.0)

    def execute(self, requests):
        received_at = time.time()
        for request in requests:
            future = asyncio.run_coroutine_threadsafe(self._serve(request, received_at), self._loop)
            self._tasks.add(future)
            future.add_done_callback(self._tasks.discard)
        return None

    async def _serve(self, request, received_at: float) -> None:
        with STUB_LOCK:
            sender = request.get_response_sender()
        try:
            await self._serve_checked(request, sender, received_at)
        except Exception as e:
            # Every request gets its final response, whatever went wrong, or its client waits forever.
            with STUB_LOCK:
                self.logger.log_error(f"[dynasor] request failed: {traceback.format_exc()}")
                send_error(sender, f"dynasor failed: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)

    async def _serve_checked(self, request, sender, received_at: float) -> None:
        with STUB_LOCK:
            req = self._parse(request, sender)
            if req is None:
                return
            if isinstance(req, CancelRequest):
                self._cancel_program(req.program_id, sender)
                return
            if isinstance(req, DrainRequest):
                self._start_drain(req.grace_s)
        if isinstance(req, DrainRequest):
            await self._report_drain(sender)
            return
        with STUB_LOCK:
            refusal, cause = self._draining_refusal(), "draining"
            if not refusal:
                refusal, cause = self._over_limit(req.client_id), "over_limit"
            if not refusal and (infeasible := self.runner.refusal(req.program, req.deadline_s)):
                refusal, cause = f"{infeasible} (config.pbtxt admission = feasible)", "deadline_at_arrival"
            if not refusal and (below := self.runner.floor_refusal(req.program, req.deadline_s, req.floor)):
                refusal, cause = below, "floor_at_arrival"
            if refusal:
                self.metrics.count("dynasor_programs_total", {"stop_reason": "refused"})
                self.metrics.count("dynasor_refusals_total", {"program": req.program_name, "cause": cause})
                send_error(sender, refusal, pb_utils.TritonError.UNAVAILABLE)
                return
            program_id = uuid.uuid4().hex
            pid = f"{request.request_id() or 'program'}-{program_id[:8]}"
            self._programs[program_id] = pid
            if req.client_id is not None:
                self._per_client[req.client_id] = self._per_client.get(req.client_id, 0) + 1
            self.in_flight.increment(1)
            self.max_running.set(self.runner.scheduler.max_running)
        watcher = asyncio.ensure_future(self._watch_cancel(sender, pid))

        def progress(state: ProgramState) -> None:
            if req.progress and not state.done:
                with STUB_LOCK:
                    if not sender.is_cancelled():
                        sender.send(_response(state, program_id))

        try:
            state = await self.runner.run(pid, req.program, req.deadline_s, progress, floor=req.floor)
        finally:
            watcher.cancel()
            with STUB_LOCK:
                self.in_flight.increment(-1)
                self.max_running.set(self.runner.scheduler.max_running)
                del self._programs[program_id]
                if req.client_id is not None:
                    self._per_client[req.client_id] -= 1
                    if not self._per_client[req.client_id]:
                        del self._per_client[req.client_id]
        with STUB_LOCK:
            _record(self.metrics, state, req.program_name, req.deadline_s)
            if state.stop_reason is StopReason.CANCELLED and sender.is_cancelled():
                send_error(sender, "program was cancelled", pb_utils.TritonError.CANCELLED)
            elif state.stop_reason is StopReason.ERROR:
                send_error(sender, f"program failed: {state.extra.get('error', 'engine error')}", pb_utils.TritonError.UNAVAILABLE)
            elif state.stop_reason is StopReason.REFUSED:
                self.metrics.count("dynasor_refusals_total", {"program": req.program_name, "cause": _refusal_cause(state)})
                send_error(sender, f"{state.extra['refusal']} (options.floor_action = refuse)", pb_utils.TritonError.UNAVAILABLE)
            else:
                # Wall-clock stamps let a client split its latency: the trip in, the server, the trip out.
                final = _response(state, program_id, received_at=round(received_at, 4), sent_at=round(time.time(), 4))
                sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _draining_refusal(self) -> str:
        if self._drain_end is None:
            return ""
        return (f"server draining: this replica admits no new programs ({len(self._programs)} in flight finishing); "
                f"{RETRY_ELSEWHERE}")

    def _start_drain(self, grace_s: float) -> None:
        """Refuse new programs from now on; when `grace_s` has passed, stop what still runs with its
        best answer so far. A second drain can only bring the end closer."""
        end = self._loop.time() + grace_s
        if self._drain_end is not None and self._drain_end <= end:
            return
        first = self._drain_end is None
        self._drain_end = end
        self.draining.set(1)
        if first:
            self.logger.log_info(f"[dynasor] draining: {len(self._programs)} programs in flight, grace {grace_s:g} s")

        def arm() -> None:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            self._drain_timer = self._loop.call_at(end, self._end_drain)

        self._loop.call_soon_threadsafe(arm)

    def _end_drain(self) -> None:
        stopped = self.runner.end_drain()
        with STUB_LOCK:
            self.logger.log_info(f"[dynasor] drain grace over: {stopped} programs stopped with their best answers so far")

    async def _report_drain(self, sender) -> None:
        """Stream the drain's progress to whoever asked for it (a preStop hook waits on it) until no
        program is left in flight; then the final response."""
        while True:
            with STUB_LOCK:
                left = len(self._programs)
                cancelled = sender.is_cancelled()
                details = {"draining": True, "programs_in_flight": left,
                           "grace_left_s": round(max(self._drain_end - self._loop.time(), 0.0), 1)}
                if cancelled:
                    return
                if not left:
                    state = ProgramState(None, 0.0, 0, 0, 0, True, StopReason.DRAINED, {**details, "drained": True})
                    sender.send(_response(state, ""), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                sender.send(_response(ProgramState(None, 0.0, 0, 0, 0, False, None, details), ""))
            await asyncio.sleep(0.5)

    def _over_limit(self, client_id: str | None) -> str:
        """Why a new program is refused under the operator's limits, or "" (under STUB_LOCK)."""
        if len(self._programs) >= self.max_programs_in_flight:
            return (f"server busy: {len(self._programs)} programs in flight, at most {self.max_programs_in_flight} "
                    f"(config.pbtxt max_programs_in_flight); {RETRY_ELSEWHERE} or later")
        held = self._per_client.get(client_id, 0) if client_id is not None else 0
        if held >= self.max_programs_per_client:
            return (f"client_id {client_id!r} has {held} programs in flight, at most {self.max_programs_per_client} "
                    "(config.pbtxt max_programs_per_client); wait for one to finish")
        return ""

    def _cancel_program(self, program_id: str, sender) -> None:
        """A `cancel_program` request: the way an HTTP client stops a program it started."""
        pid = self._programs.get(program_id)
        if pid is None:
            send_error(sender, f"cancel_program: no program {program_id!r} in flight", pb_utils.TritonError.NOT_FOUND)
            return
        self._loop.call_soon_threadsafe(self.runner.cancel, pid)
        state = ProgramState(None, 0.0, 0, 0, 0, True, StopReason.CANCELLED, {"cancelled": program_id})
        sender.send(_response(state, program_id), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _parse(self, request, sender):
        """The validated program request, a program id to cancel, or None after answering with an
        error naming the field. Called under STUB_LOCK: it reads the request's tensors."""
        try:
            return parse_program_request(
                scalar_input(request, "text_input"),
                scalar_input(request, "program"),
                scalar_input(request, "options"),
                parse_json(text(request.parameters() or "{}", "parameters"), "parameters"),
                default_program=self.default_program,
                limits=self.limits,
                max_deadline_s=self.max_deadline_s,
                calibration_dir=self.calibration_dir,
                default=self.default_allocation,
                default_floor=self.default_floor,
            )
        except RequestError as e:
            self.metrics.count("dynasor_programs_total", {"stop_reason": "invalid"})
            send_error(sender, str(e), pb_utils.TritonError.INVALID_ARG)
            return None

    async def _watch_cancel(self, sender, pid: str) -> None:
        """A program waiting on the engine sends nothing to notice a cancel by: poll."""
        while True:
            await asyncio.sleep(0.1)
            with STUB_LOCK:
                if sender.is_cancelled():
                    break
        self.runner.cancel(pid)

    def finalize(self):
        if self._agent_server is not None:  # its port free at once for a model reloaded in place
            self._loop.call_soon_threadsafe(self._agent_server.close)
        self._loop.call_soon_threadsafe(self.runner.cancel_all)
        for future in list(self._tasks):
            try:
                future.result(timeout=10)
            except Exception:  # already answered with an error; shutting down either way
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.engine.shutdown()


def _max_running(p: dict) -> tuple[int, ConcurrencyController | None]:
    """`max_running_programs`: an integer is fixed; "auto" follows the engine's measured capacity
    (16 until measured), keeping at most `max_sequences_in_flight` sequences in flight."""
    value = p.get("max_running_programs", "auto").strip()
    if value != "auto":
        try:
            return int(value), None
        except ValueError:
            raise pb_utils.TritonModelException(f'parameters.max_running_programs: "auto" or an integer, got {value!r}') from None
    controller = ConcurrencyController(max_seqs=float(p.get("max_sequences_in_flight", "64")))
    return controller.max_running, controller


def _response(state: ProgramState, program_id: str, **stamps: float):
    details = {"budget": state.budget, "program_id": program_id, **state.extra, **stamps}
    tensors = [
        pb_utils.Tensor("answer", np.array([(state.answer or "").encode()], dtype=np.object_)),
        pb_utils.Tensor("certaindex", np.array([state.certaindex], dtype=np.float32)),
        pb_utils.Tensor("final", np.array([state.done], dtype=np.bool_)),
        pb_utils.Tensor("stop_reason", np.array([(state.stop_reason.value if state.stop_reason else "").encode()], dtype=np.object_)),
        pb_utils.Tensor("tokens_used", np.array([state.tokens_used], dtype=np.int64)),
        pb_utils.Tensor("steps", np.array([state.steps], dtype=np.int32)),
        pb_utils.Tensor("progress", np.array([dump_json(details).encode()], dtype=np.object_)),
    ]
    return pb_utils.InferenceResponse(output_tensors=tensors)


_METRICS = (
    ("dynasor_programs_in_flight", "Reasoning programs running or queued", "gauge"),
    ("dynasor_max_running_programs", "Programs allowed to issue engine requests at once (auto: from measured capacity)", "gauge"),
    ("dynasor_programs_running", "Programs admitted by the scheduler and issuing engine requests", "gauge"),
    ("dynasor_programs_queued", "Programs waiting for the scheduler to admit them", "gauge"),
    ("dynasor_predicted_remaining_tokens", "Tokens the live programs are predicted to need still (remaining knob units times "
                                           "tokens per unit): the replica's load for a balancer or an autoscaler", "gauge"),
    ("dynasor_engine_tokens_per_second", "Tokens per second the engine generated for programs, measured over the last windows", "gauge"),
    ("dynasor_draining", "1 while this replica drains (admits no new programs), else 0", "gauge"),
    ("dynasor_programs_total", "Programs ended, by program and stop reason", "counter"),
    ("dynasor_program_certaindex_at_stop", "Certaindex of programs when they stopped", "histogram"),
    ("dynasor_program_tokens_used_total", "Tokens generated for programs", "counter"),
    ("dynasor_program_tokens_saved_total", "Tokens not spent against the cap (unused knob units times tokens per unit)", "counter"),
    ("dynasor_program_deadline_total", "Programs with a deadline, by outcome (met: answered by it on the quality floor; "
                                       "met_below_floor: answered by it below the floor; missed: no answer by then; "
                                       "refused: the floor could not be met by it)", "counter"),
    ("dynasor_answers_total", "Answers served, by program and quality (floor_met: rests on the quality floor's units; "
                              "below_floor: a degraded answer; probed: rests on answers probed from unfinished samples)", "counter"),
    ("dynasor_refusals_total", "Programs refused, by program and cause (over_limit, deadline_at_arrival, floor_at_arrival, "
                               "floor_mid_run, floor_at_deadline, draining)", "counter"),
)


def _flag(value: str, name: str) -> bool:
    if value.strip().lower() not in ("true", "false"):
        raise ValueError(f"{name}: must be true or false, got {value!r}")
    return value.strip().lower() == "true"


def _refusal_cause(state: ProgramState) -> str:
    """A REFUSED program's cause: stopped before its deadline (the rate showed the floor out of
    reach), or at the deadline with an answer below the floor."""
    return "floor_at_deadline" if state.extra["refusal"].startswith("floor: the deadline came") else "floor_mid_run"


def _record(metrics: Metrics, state: ProgramState, program: str, deadline_s: float | None) -> None:
    """A finished program's outcome, certaindex, tokens used and saved, and deadline kept."""
    labels = {"program": program}
    metrics.count("dynasor_programs_total", {**labels, "stop_reason": state.stop_reason.value})
    metrics.metric("dynasor_program_certaindex_at_stop", labels, buckets=_CERTAINDEX_BUCKETS).observe(state.certaindex)
    metrics.count("dynasor_program_tokens_used_total", labels, state.tokens_used)
    if state.steps and state.budget > state.steps:
        metrics.count("dynasor_program_tokens_saved_total", labels, (state.budget - state.steps) * state.tokens_used / state.steps)
    quality = state.extra.get("quality")
    if deadline_s is not None:  # stopped by its deadline with an answer is an answer in time
        met = state.stop_reason is not StopReason.DEADLINE or state.answer is not None
        outcome = "met" if met else "missed"
        if state.stop_reason is StopReason.REFUSED:
            outcome = "refused"
        elif met and quality is not None and not quality["floor_met"]:
            outcome = "met_below_floor"  # in time, but with a guess below the quality floor
        metrics.count("dynasor_program_deadline_total", {"outcome": outcome})
    if state.answer is not None and quality is not None:
        kind = "probed" if quality["probed"] else "floor_met" if quality["floor_met"] else "below_floor"
        metrics.count("dynasor_answers_total", {**labels, "quality": kind})
