"""Code answers: a sample's program out of its text, the inputs a problem's statement gives away,
and the sample's behaviour on them as a fingerprint, so that samples vote on what their programs
do rather than on how they are written (clustering by execution, as AlphaCode and CodeT do).

The inputs come from the statement only: the calls its docstring shows (`>>> f(2)`, `f(2) == 4`,
`f(2) ➞ 4`), and a few made from the parameters' type hints; failing both, examples written as
values (`arr = [1, 2]`, `Input: [4, 2]`). A statement with none of these is voted on the programs'
written form instead (only identical programs agree). Hidden tests never take part; they
grade programs for traces and figures (`passes_tests`), never the vote.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler_backend.answers import BEHAVIOUR_PREFIX, majority_answer
from scheduler_backend.errors import RequestError
from scheduler_backend.sandbox import RunResult, Sandbox, default_sandbox

TEST_S = 6.0  # the hidden tests of one problem, all of them (some check a hundred inputs)
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
# Values per type hint for made-up inputs; the i-th input takes the i-th value of every parameter.
_HINT_VALUES: dict[str, tuple[str, ...]] = {
    "int": ("0", "1", "7", "-3"),
    "float": ("0.0", "2.5", "-1.5", "10.0"),
    "str": ("''", "'abc'", "'Hello World'", "'a1b2 C3'"),
    "bool": ("False", "True", "True", "False"),
    "list": ("[]", "[1, 2, 3]", "[5, 3, -1, 3]", "[0]"),
    "List[int]": ("[]", "[1, 2, 3]", "[5, 3, -1, 3]", "[0]"),
    "list[int]": ("[]", "[1, 2, 3]", "[5, 3, -1, 3]", "[0]"),
    "List[float]": ("[]", "[1.0, 2.5]", "[3.5, -1.0, 2.0]", "[0.0]"),
    "list[float]": ("[]", "[1.0, 2.5]", "[3.5, -1.0, 2.0]", "[0.0]"),
    "List[str]": ("[]", "['a', 'bc']", "['xyz', 'ab', 'abc']", "['']"),
    "list[str]": ("[]", "['a', 'bc']", "['xyz', 'ab', 'abc']", "['']"),
}


@dataclass(frozen=True)
class CodeProblem:
    """What the program needs of a question: the statement itself, the function it asks for, and
    the probe calls the statement gives away."""

    question: str
    entry_point: str
    calls: tuple[str, ...]


def entry_point(question: str) -> str:
    """The function the question asks for: its last top-level `def` whose body is only a docstring
    (HumanEval's form), else its last `def`. RequestError names the field when there is none."""
    try:
        tree = ast.parse(question)
    except SyntaxError as e:
        raise RequestError(f"text_input: a code question must be a Python function signature with its docstring "
                         f"({e.msg}, line {e.lineno})") from None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not defs:
        raise RequestError("text_input: a code question must contain the `def` of the function to write")
    open_defs = [d for d in defs if len(d.body) == 1 and isinstance(d.body[0], ast.Expr)
                 and isinstance(d.body[0].value, ast.Constant)]
    return (open_defs or defs)[-1].name


def _calls_in(text: str, name: str) -> list[str]:
    """Every `name(...)` in `text` that parses as a Python expression, in order, without repeats."""
    found = []
    for m in re.finditer(rf"(?<![\w.]){re.escape(name)}\s*\(", text):
        if text[max(0, m.start() - 4):m.start()] == "def ":
            continue
        depth, end = 0, None
        for j in range(m.end() - 1, len(text)):
            depth += (text[j] in "([{") - (text[j] in ")]}")
            if depth == 0:
                end = j + 1
                break
        if end is None:
            continue
        expr = " ".join(text[m.start():end].split())
        try:
            ast.parse(expr, mode="eval")
        except SyntaxError:
            continue
        found.append(expr)
    return list(dict.fromkeys(found))


def _hint_calls(question: str, name: str, count: int = 4) -> list[str]:
    """Calls made from the type hints of `name`'s parameters; none when a hint is unknown."""
    tree = ast.parse(question)
    fn = next(n for n in reversed(tree.body) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
    args = fn.args.posonlyargs + fn.args.args
    hints = [ast.unparse(a.annotation) if a.annotation is not None else "" for a in args]
    if not args or any(h not in _HINT_VALUES for h in hints):
        return []
    return [f"{name}({', '.join(_HINT_VALUES[h][i] for h in hints)})" for i in range(count)]


def _literal_at(text: str, start: int) -> str | None:
    """The Python literal that starts at text[start] (a bracketed or quoted one, or a number or
    boolean), or None."""
    if start >= len(text):
        return None
    if text[start] in "[({'\"":
        depth, quote, i = 0, None, start
        while i < len(text):
            c = text[i]
            if quote:
                quote = None if c == quote else quote
            elif c in "'\"":
                quote = c
            else:
                depth += (c in "[({") - (c in "])}")
                if depth == 0:
                    break
            i += 1
        candidate = text[start:i + 1] if depth == 0 else None
    else:
        m = re.match(r"-?\d+(?:\.\d+)?|True|False", text[start:])
        candidate = m.group() if m else None
    if candidate is None:
        return None
    try:
        ast.literal_eval(candidate)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return " ".join(candidate.split())


def _example_calls(doc: str, name: str, params: list[str]) -> list[str]:
    """Calls from examples written as values (`arr = [1, 2]`, `grid : [[0, 1]]`, `Input: [4, 2]`
    for a one-parameter function): the i-th value of every parameter together."""
    values: list[list[str]] = []
    for param in params:
        found = [v for m in re.finditer(rf"(?<![\w.]){re.escape(param)}\s*[:=]\s*", doc)
                 if (v := _literal_at(doc, m.end())) is not None]
        if not found and len(params) == 1:
            found = [v for m in re.finditer(r"Input\s*:\s*", doc) if (v := _literal_at(doc, m.end())) is not None]
        values.append(found)
    count = min((len(v) for v in values), default=0)
    return [f"{name}({', '.join(v[i] for v in values)})" for i in range(count)]


def code_problem(question: str) -> CodeProblem:
    name = entry_point(question)
    doc = question[question.find(f"def {name}"):]
    fn = next(n for n in reversed(ast.parse(question).body)
              if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    calls = _calls_in(doc, name) + _hint_calls(question, name)
    if not calls:
        calls = _example_calls(doc, name, params)
    return CodeProblem(question, name, tuple(dict.fromkeys(calls)))


def extract_program(text: str, problem: CodeProblem) -> str | None:
    """The whole runnable program a sample proposes: the question (its imports and helpers) and the
    sample's code after it, whose `def` then wins. A fenced block is preferred; a sample that only
    wrote the body gets it indented under the question's signature. None when nothing parses."""
    blocks = [b for b in _FENCE.findall(text) if b.strip()]
    candidates = [b for b in blocks if re.search(rf"def\s+{re.escape(problem.entry_point)}\s*\(", b)] or blocks or [text]
    code = textwrap.dedent(candidates[0]).strip("\n")
    defines = re.search(rf"def\s+{re.escape(problem.entry_point)}\s*\(", code) is not None
    body = code if defines else textwrap.indent(code, "    ")
    source = problem.question.rstrip() + ("\n\n\n" if defines else "\n") + body + "\n"
    try:
        ast.parse(source)
    except SyntaxError:
        return None
    return source


def fingerprint(run: RunResult) -> str | None:
    """The behaviour of one program as an answer string: same outcomes on the same calls, same
    fingerprint. None (no answer) when it did not define the function or the run failed."""
    if run.result is None or not run.result.get("defined"):
        return None
    digest = hashlib.sha256(json.dumps(run.result.get("outcomes", [])).encode()).hexdigest()[:16]
    return BEHAVIOUR_PREFIX + digest


def written_form(source: str | None, entry: str) -> str | None:
    """For a problem whose statement gives no call to probe with: the entry function as written
    (its syntax tree, docstrings and names of locals kept), so only identical programs agree and
    certaindex stays low where behaviour cannot be compared."""
    if source is None:
        return None
    fn = next((n for n in reversed(ast.parse(source).body)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry), None)
    if fn is None or (len(fn.body) == 1 and isinstance(fn.body[0], ast.Expr)):
        return None  # no body of its own: the question's signature only
    return BEHAVIOUR_PREFIX + "ast-" + hashlib.sha256(ast.dump(fn).encode()).hexdigest()[:16]


def behaviours(sources: Sequence[str | None], problem: CodeProblem, sandbox: Sandbox | None = None) -> list[str | None]:
    """Each program's fingerprint on the problem's probe calls, run in the sandbox concurrently;
    by its written form where the statement gives no call."""
    if not problem.calls:
        return [written_form(s, problem.entry_point) for s in sources]
    sandbox = sandbox or default_sandbox()
    todo = [(i, s) for i, s in enumerate(sources) if s is not None]
    runs = sandbox.run_many([{"source": s, "entry_point": problem.entry_point, "calls": list(problem.calls)}
                             for _, s in todo])
    out: list[str | None] = [None] * len(sources)
    for (i, _), run in zip(todo, runs):
        out[i] = fingerprint(run)
    return out


@dataclass(frozen=True)
class Vote:
    """Samples' programs voted by behaviour: each sample's program and fingerprint, and the winner
    (the first program of the largest cluster), as the `code` program answers."""

    sources: list[str | None]
    prints: list[str | None]
    chosen: int | None  # index of the winning sample; None when no sample has an answer

    @property
    def answer(self) -> str | None:
        return None if self.chosen is None else self.sources[self.chosen]


def vote(texts: Sequence[str], problem: CodeProblem, sandbox: Sandbox | None = None) -> Vote:
    """The `code` program's vote over finished samples' texts (clients and benchmarks that sample
    outside the program use it to answer as the program would)."""
    sources = [extract_program(t, problem) for t in texts]
    prints = behaviours(sources, problem, sandbox)
    majority = majority_answer(prints)[0]
    return Vote(sources, prints, None if majority is None else prints.index(majority))


def passes_tests(source: str | None, tests: str, entry: str, sandbox: Sandbox | None = None) -> bool:
    """Whether `source` passes the hidden tests (HumanEval's `check`), run in the sandbox."""
    if source is None:
        return False
    run = (sandbox or default_sandbox()).run({"source": source, "entry_point": entry, "test": tests, "call_s": TEST_S})
    return bool(run.result and run.result.get("passed"))
