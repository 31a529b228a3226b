"""Locust load test of reasoning programs under a deadline SLO: open-loop Poisson arrivals at
`--program-rate` programs per second per user class, each program with the deadline
`--slo-scale` x `--base-deadline-s`.

User classes (pick some on the command line; all three by default):
- `DynasorGrpcUser`: the `dynasor` model over gRPC streaming, the deadline as `deadline_s`;
- `DynasorHttpUser`: the same over HTTP `generate_stream`;
- `BaselineUser`: what a Triton + vLLM user does today: the same question as fixed-n
  self-consistency sent straight to `policy` (one request for `--budget` samples), the majority
  vote taken in the client, no certaindex and no scheduler; at the deadline the client closes the
  stream and votes over the samples that finished.

Each program fires one Locust request event (type "dynasor-grpc", "dynasor-http" or "baseline",
name = the program, response time = end-to-end latency, length = tokens, an exception when it
missed the SLO) and leaves a record; at test stop the per-class summary (loadtest/slo.py) is
printed and written to `--summary-json`. Local runs only (records are kept in this process).

    locust -f loadtest/locustfile.py --headless -u 3 -r 3 -t 60s --grpc-url 127.0.0.1:8001 \
        --http-url 127.0.0.1:8000 --program-rate 0.2 --slo-scale 1 --base-deadline-s 30 \
        --csv runs/load --summary-json runs/load_summary.json
"""
from __future__ import annotations

import gc
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import gevent
import grpc.experimental.gevent as grpc_gevent
from gevent.pool import Group
from locust import User, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from client.dynasor_client import DynasorClient
from engines.grpc_stream import StreamCall
from engines.policy_stream import SampleAccumulator, decode_deltas, policy_inputs
from loadtest.slo import (
    Outcome,
    ProgramRecord,
    format_summary,
    poisson_gap,
    program_deadline,
    summarize,
    summary_json,
)
from scheduler_backend.datasets import Problem, is_correct, load
from scheduler_backend.engine import GenerateCall, SamplingSpec
from scheduler_backend.prompts import solve_messages

STREAM_THREADS = 512
# tritonclient's gRPC streams block in grpc's C core; this lets them yield to other greenlets.
grpc_gevent.init_gevent()
# grpc's gevent support waits on each open stream from a thread of the hub's pool. gevent's default
# pool of 10 threads held back every response of the 11th and later streams in flight by 1-2 s
# under load, so programs answered on time by the server reached the client late
# (docs/PLATFORM.md pitfall 26): a thread for every stream this process may hold open.
gevent.get_hub().threadpool.maxsize = STREAM_THREADS

log = logging.getLogger("dynasor.loadtest")


class _Run:
    """What the users of this process share: the questions, the in-flight programs (spawned, so
    arrivals do not wait on them) and the finished programs' records."""

    problems: list[Problem] = []
    in_flight = Group()
    records: list[ProgramRecord] = []
    # Code answers are graded by running hidden tests with a time limit: under load they would time
    # out on a busy machine and count as wrong, so they are graded at test stop, at rest.
    ungraded: dict[int, Problem] = {}  # index into records -> its problem
    started = 0.0
    user_numbers = itertools.count()  # each user's arrivals are its own seeded stream


@events.init_command_line_parser.add_listener
def _arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("dynasor load test")
    group.add_argument("--program-rate", type=float, default=0.2, env_var="DYNASOR_PROGRAM_RATE",
                       help="programs per second per user class (Poisson arrivals, open loop)")
    group.add_argument("--slo-scale", type=float, default=1.0, env_var="DYNASOR_SLO_SCALE", help="deadline = slo-scale x base-deadline-s")
    group.add_argument("--base-deadline-s", type=float, default=30.0, env_var="DYNASOR_BASE_DEADLINE_S")
    group.add_argument("--deadline-grace-s", type=float, default=0.5, help="time allowed for the answer's trip back")
    group.add_argument("--grpc-url", default="127.0.0.1:8001", help="the server's gRPC host:port (DynasorGrpcUser, BaselineUser)")
    group.add_argument("--http-url", default="127.0.0.1:8000", help="the server's HTTP host:port (DynasorHttpUser)")
    group.add_argument("--dataset", default="grade-school", choices=["grade-school", "gsm8k", "humaneval"],
                       help="humaneval: code questions; use with --program code (the baseline then votes by behaviour too)")
    group.add_argument("--questions", type=int, default=0, help="draw from the first N questions of the test split (0: all)")
    group.add_argument("--program", default="self-consistency",
                       help="the dynasor program; the baseline is fixed-n sampling, voted as self-consistency or, for code, by behaviour")
    group.add_argument("--budget", type=int, default=8, help="dynasor's budget, and the baseline's n")
    group.add_argument("--max-tokens", type=int, default=640, help="tokens per sample, both")
    group.add_argument("--floor", type=int, default=0,
                       help="quality floor (samples an answer must rest on): sent to dynasor as options.floor, and the "
                            "summary's 'at floor' attainment counts only answers resting on it, the baseline's included")
    group.add_argument("--floor-action", default="degrade", choices=("degrade", "refuse"), help="dynasor's options.floor_action")
    group.add_argument("--resubmit", type=int, default=0,
                       help="dynasor users: send a program again, up to N times, when it was refused UNAVAILABLE before it "
                            "streamed anything (a draining or busy replica: behind a proxy the next try goes elsewhere)")
    group.add_argument("--dynasor-options", default="{}", help="more dynasor options as a JSON object (win over the above)")
    group.add_argument("--summary-json", default="", help="write the per-class summary here at test stop")
    group.add_argument("--records-json", default="", help="write every program's record here at test stop (JSON lines)")
    group.add_argument("--seed", type=int, default=0)


def _options(env: Environment) -> Any:
    assert env.parsed_options is not None, "set by locust's command line"
    return env.parsed_options


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    o = _options(environment)
    program_deadline(o.slo_scale, o.base_deadline_s)  # refuses bad values before any program runs
    if o.questions < 0:
        raise ValueError(f"questions: must be >= 0, got {o.questions}")
    _Run.problems = load(o.dataset, "test", o.questions or None)
    _Run.records = []
    _Run.ungraded = {}
    _Run.started = time.monotonic()


@events.test_stop.add_listener
def _stop(environment: Environment, **_: Any) -> None:
    """Let programs in flight end (each ends by its deadline and grace), then summarize."""
    o = _options(environment)
    duration = time.monotonic() - _Run.started
    _Run.in_flight.join(timeout=program_deadline(o.slo_scale, o.base_deadline_s) + o.deadline_grace_s + 5)
    unfinished = len(_Run.in_flight)
    _Run.in_flight.kill(block=False)
    # tritonclient closes its gRPC channel again when collected; collected at interpreter exit,
    # after gevent's hub is gone, that close hung the process (1 run in 6): collect them now.
    gc.collect()
    _Run.records = [replace(r, correct=is_correct(_Run.ungraded[i], r.answer)) if i in _Run.ungraded else r
                    for i, r in enumerate(_Run.records)]
    if not _Run.records or duration <= 0:
        log.warning("no program ended during the test: nothing to summarize")
        return
    summary = summarize(_Run.records, duration)
    print(f"\nDynasor load test: {o.program_rate} programs/s per class, deadline {program_deadline(o.slo_scale, o.base_deadline_s):.1f} s "
          f"(SLO scale {o.slo_scale} x {o.base_deadline_s} s), {duration:.0f} s, {unfinished} programs cut at stop")
    print(format_summary(summary))
    if o.summary_json:
        settings = {k: getattr(o, k) for k in ("program_rate", "slo_scale", "base_deadline_s", "deadline_grace_s", "dataset", "program",
                                               "budget", "max_tokens", "dynasor_options", "seed", "questions", "floor",
                                               "floor_action")}
        settings["unfinished_at_stop"] = unfinished
        path = Path(o.summary_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(summary_json(summary, settings, duration))
    if o.records_json:
        Path(o.records_json).write_text("".join(json.dumps(asdict(r)) + "\n" for r in _Run.records))


class _ProgramUser(User):
    """Submits one program per Poisson arrival and never waits for it (open loop)."""

    abstract = True
    request_type = ""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        o = _options(environment)
        self.o = o
        # Not seeded by class: runs of different classes with one seed get the same arrivals and
        # questions, so they compare program by program.
        self.rng = random.Random(f"{o.seed}-{next(_Run.user_numbers)}")
        self.deadline_s = program_deadline(o.slo_scale, o.base_deadline_s)

    def wait_time(self) -> float:
        runner = self.environment.runner
        users = runner.user_classes_count.get(type(self).__name__, 1) if runner is not None else 1
        return poisson_gap(self.o.program_rate, users, self.rng)

    def on_start(self) -> None:
        gevent.sleep(self.wait_time())  # a Poisson process starts with a gap, not an arrival

    @task
    def submit(self) -> None:
        problem = self.rng.choice(_Run.problems)
        _Run.in_flight.spawn(self._program, problem)

    def solve(self, problem: Problem) -> Outcome:
        """What the program returned; `ended` is False when the client gave up on a stream that sent no final answer."""
        raise NotImplementedError

    @property
    def program_name(self) -> str:
        return str(self.o.program)

    def _program(self, problem: Problem) -> None:
        started_at, start = time.time(), time.monotonic()
        outcome, error = Outcome(), ""
        try:
            outcome = self.solve(problem)
        except Exception as e:  # any failure is this program's: recorded, reported, never raised into Locust
            error = f"{type(e).__name__}: {e}"
        latency, ended_at = time.monotonic() - start, time.time()
        at_rest = bool(problem.tests)  # graded at test stop (`_Run.ungraded`)
        record = ProgramRecord(user_class=type(self).__name__, latency_s=latency, deadline_s=self.deadline_s, answer=outcome.answer,
                               correct=False if at_rest else is_correct(problem, outcome.answer), tokens=outcome.tokens, error=error,
                               ended=outcome.ended,
                               grace_s=self.o.deadline_grace_s, question_id=problem.id, stop_reason=outcome.stop_reason,
                               steps=outcome.steps, probed=outcome.probed, started_at=started_at, ended_at=ended_at, server=outcome.server,
                               floor=self.o.floor)
        if at_rest:
            _Run.ungraded[len(_Run.records)] = problem
        _Run.records.append(record)
        failure = record.failure()
        self.environment.events.request.fire(
            request_type=self.request_type, name=self.program_name, response_time=latency * 1000, response_length=outcome.tokens,
            exception=ProgramMissed(failure) if failure else None, context={"problem": problem.id, "correct": None if at_rest else record.correct},
        )

    def _limit_s(self) -> float:
        return self.deadline_s + self.o.deadline_grace_s


class ProgramMissed(Exception):
    """A program that missed its SLO (deadline, answer or error), as Locust counts failures."""


class _DynasorUser(_ProgramUser):
    abstract = True
    protocol = "grpc"

    def solve(self, problem: Problem) -> Outcome:
        url = self.o.grpc_url if self.protocol == "grpc" else self.o.http_url
        client = DynasorClient(url, protocol=self.protocol, timeout_s=self._limit_s() + 5)
        floor = {"floor": self.o.floor, "floor_action": self.o.floor_action} if self.o.floor else {}
        options = {"budget": self.o.budget, "max_tokens": self.o.max_tokens, **floor, **json.loads(self.o.dynasor_options),
                   "deadline_s": self.deadline_s}
        return _until(self._limit_s(), lambda: client.stream(problem.question, self.o.program, options, self.o.resubmit),
                      lambda p: Outcome(p.answer, p.tokens_used, p.final, p.stop_reason, p.steps, int(p.details.get("probed", 0)),
                                        p.details if p.final else None))


class DynasorGrpcUser(_DynasorUser):
    request_type = "dynasor-grpc"
    protocol = "grpc"


class DynasorHttpUser(_DynasorUser):
    request_type = "dynasor-http"
    protocol = "http"


class BaselineUser(_ProgramUser):
    """Fixed-n self-consistency straight to `policy`, voted in the client, cut at the deadline; on
    code questions the samples' programs vote by behaviour, as the `code` program's do."""

    request_type = "baseline"

    @property
    def code(self) -> bool:
        return self.o.program == "code"

    @property
    def program_name(self) -> str:
        return "code" if self.code else "self-consistency"

    def solve(self, problem: Problem) -> Outcome:
        call = GenerateCall(request_id=uuid.uuid4().hex, messages=solve_messages(problem.question, "code" if self.code else "math"),
                            sampling=SamplingSpec(n=self.o.budget, max_tokens=self.o.max_tokens, temperature=0.5, top_p=1.0, top_k=50))
        samples = SampleAccumulator()
        stream = StreamCall(self.o.grpc_url, "policy", policy_inputs(call), request_id=call.request_id, timeout_s=self._limit_s() + 5)
        try:
            with gevent.Timeout(self.deadline_s, False):
                for response in stream:
                    samples.add(decode_deltas(response.outputs))
        finally:
            stream.close()  # at the deadline: cancels the samples still running
        answer = samples.program_answer(problem.question) if self.code else samples.answer()
        return Outcome(answer, samples.tokens, True, "deadline" if samples.finished < self.o.budget else "finished",
                       samples.finished)


def _until(limit_s: float, open_stream: Callable[[], Any], read: Callable[[Any], Outcome]) -> Outcome:
    """Read a dynasor stream to its final response, or give up at `limit_s` (closing it cancels
    the program): the outcome of the last response seen (not ended if that was not the final one)."""
    last = Outcome(ended=False)
    stream = open_stream()
    try:
        with gevent.Timeout(limit_s, False):
            for progress in stream:
                last = read(progress)
    finally:
        stream.close()
    return last
