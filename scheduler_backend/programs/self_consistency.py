"""Self-consistency: sample whole solutions in rounds and return the majority answer. Certaindex is
the agreement of the answers so far (1 - H/log n), consulted after every round, so easy questions
stop after the first round and hopeless ones are cut. When a deadline cuts samples before any
finished, each unfinished one is probed for the answer it was heading to (Dynasor-CoT's probe,
greedy): those answers vote like the others and are counted as `probed`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from scheduler_backend.allocation import AllocationPolicy
from scheduler_backend.answers import cluster_answers, extract_probe_answer, majority_answer
from scheduler_backend.certaindex import entropy_certaindex
from scheduler_backend.engine import SamplingSpec
from scheduler_backend.program import GenerateStep, Sample, Step, StepResult
from scheduler_backend.programs.base import (
    PROBE_SAMPLING,
    PROBE_SUFFIX,
    PolicyProgram,
    require_positive,
    sample_answer,
    sampling_from,
)

_GREEDY_PROBE = replace(PROBE_SAMPLING, temperature=0.0, top_k=0)


class SelfConsistency(PolicyProgram):
    """Knob: samples; `budget` is the most samples. The first round is `first_round` samples (the
    policy's detection step, so the first verdict sees enough answers), later ones `round_size`."""

    name = "self-consistency"

    def __init__(self, question: str, budget: int, policy: AllocationPolicy, *, sampling: SamplingSpec,
                 round_size: int = 4, first_round: int | None = None, answer_format: str = "auto",
                 prompt: str = "math"):
        super().__init__(question, budget, policy, prompt)
        require_positive(round_size=round_size)
        self.sampling = sampling
        self.round_size = round_size
        self.first_round = first_round or round_size
        self.answer_format = answer_format
        self.answers: list[str | None] = []
        self.texts: list[str] = []  # each answer's sample (or probe) text, for `answer_text`
        self._issued = 0
        self._rounds = 0
        self._waiting = False
        self.probed = 0  # answers drawn from unfinished samples by probing
        self._last_round = False  # a deadline is near: the next round takes the rest of the budget

    @classmethod
    def from_options(cls, question: str, o: Mapping[str, Any], policy: AllocationPolicy) -> SelfConsistency:
        """From registry-validated options; the first round is the policy's detection step."""
        return cls(question, o["budget"], policy, sampling=sampling_from(o), round_size=o["round_size"],
                   first_round=getattr(policy, "detect_step", None), answer_format=o["answer_format"],
                   prompt=o["prompt"])

    def next_steps(self) -> list[Step]:
        if self.done or self._waiting:
            return []
        size = self._first_size() if self._rounds == 0 else self.round_size
        size = min(self.budget if self._last_round else size, self.budget - self._issued)
        if size < 1:
            return []
        self._issued += size
        self._rounds += 1
        self._waiting = True
        return [GenerateStep(key=f"round{self._rounds}", sampling=replace(self.sampling, n=size),
                             messages=self.solve_messages())]

    def last_round(self) -> None:
        self._last_round = True

    def _first_size(self) -> int:
        """The first round: the detection step, or the quality floor where that is more, since no
        answer may stop below the floor: its samples run side by side rather than in rounds."""
        return max(self.first_round, self.min_units)

    def first_units(self) -> int:
        return min(self._first_size(), self.budget)

    def units_committed(self) -> int:
        return self._issued

    def probe_steps(self, partials: Sequence[str]) -> list[Step]:
        """One short greedy continuation per unfinished solution, told to state its final answer."""
        return [GenerateStep(key=f"probe{i}", sampling=_GREEDY_PROBE, messages=self.solve_messages(text + PROBE_SUFFIX))
                for i, text in enumerate(partials)]

    def _absorb(self, result: StepResult) -> None:
        if result.key.startswith("probe"):
            # No consult: the driver probes only when it is about to stop the program at its deadline.
            self.answers.extend(extract_probe_answer(s.text) for s in result.samples)
            self.texts.extend(s.text for s in result.samples)
            self.probed += len(result.samples)
            self._issued = len(self.answers)
            return
        self._waiting = False
        self.answers.extend(self.sample_answers(result.samples))
        self.texts.extend(s.text for s in result.samples)
        self._issued = len(self.answers)  # samples the engine did not return are not spent
        self._consult()

    def sample_answers(self, samples: Sequence[Sample]) -> list[str | None]:
        """What each finished sample votes for: its final answer."""
        return [sample_answer(s.text, s.finish_reason, self.answer_format) for s in samples]

    def certaindex(self) -> float:
        return entropy_certaindex(self.answers)

    def best_answer(self) -> str | None:
        return majority_answer(self.answers)[0]

    def answer_text(self) -> str | None:
        """The first sample of the majority cluster (the one `best_answer` names)."""
        clusters = cluster_answers(self.answers)
        return self.texts[clusters[0][0]] if clusters else None

    def has_answer(self) -> bool:
        return any(a is not None for a in self.answers)

    def steps_used(self) -> int:
        return len(self.answers)

    def extra_state(self) -> dict[str, Any]:
        clusters = cluster_answers(self.answers)
        return {
            "clusters": [{"answer": self.answers[group[0]], "size": len(group)} for group in clusters],
            "no_answer": sum(a is None for a in self.answers),
            "probed": self.probed,
        }
