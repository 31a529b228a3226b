"""Self-consistency over programs: each sample writes the whole function, the samples run in the
sandbox on the calls the problem's statement shows, and they vote by behaviour (same results, same
exceptions). Certaindex is 1 - H/log n over those behaviour clusters, as for answers; the answer is
the full source of the first program of the largest cluster, runnable as it is. A sample that
defines no function, does not parse or crashes its run has no answer. Unfinished samples are not
probed: half a function states no answer."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduler_backend.allocation import AllocationPolicy
from scheduler_backend.answers import majority_answer
from scheduler_backend.code_behaviour import CodeProblem, behaviours, code_problem, extract_program
from scheduler_backend.engine import SamplingSpec
from scheduler_backend.program import Sample, Step
from scheduler_backend.programs.base import sampling_from
from scheduler_backend.programs.self_consistency import SelfConsistency
from scheduler_backend.sandbox import Sandbox


class CodeConsistency(SelfConsistency):
    """Knob: samples, as self-consistency; `sandbox` runs the programs (the process's default)."""

    name = "code"

    def __init__(self, question: str, budget: int, policy: AllocationPolicy, *, sampling: SamplingSpec,
                 round_size: int = 4, first_round: int | None = None, prompt: str = "code",
                 sandbox: Sandbox | None = None):
        self.problem: CodeProblem = code_problem(question)
        super().__init__(question, budget, policy, sampling=sampling, round_size=round_size,
                         first_round=first_round, prompt=prompt)
        self.sandbox = sandbox
        self.sources: list[str | None] = []  # each finished sample's program, beside its behaviour

    @classmethod
    def from_options(cls, question: str, o: Mapping[str, Any], policy: AllocationPolicy) -> CodeConsistency:
        return cls(question, o["budget"], policy, sampling=sampling_from(o), round_size=o["round_size"],
                   first_round=getattr(policy, "detect_step", None), prompt=o["prompt"])

    def sample_answers(self, samples: Sequence[Sample]) -> list[str | None]:
        """Each sample's behaviour fingerprint; its source is kept for the answer."""
        sources = [extract_program(s.text, self.problem) for s in samples]
        self.sources.extend(sources)
        return behaviours(sources, self.problem, self.sandbox)

    def probe_steps(self, partials: Sequence[str]) -> list[Step]:
        return []

    def best_answer(self) -> str | None:
        fingerprint = majority_answer(self.answers)[0]
        return None if fingerprint is None else self.sources[self.answers.index(fingerprint)]

    def answer_text(self) -> str | None:
        """None: the answer is already the program's full source."""
        return None

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "probe_calls": len(self.problem.calls)}
