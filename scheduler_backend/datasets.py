"""Questions and their answers: JSONL question files as the CLI and the recorder read them, and the
benchmark sets shipped in `data/` (origin, licenses and checksums in data/SOURCES.md), each read
into one shape: a question, its gold answer, and how an answer is graded.

Game of 24 has no answer key: an answer is right when it is an expression that uses the four
numbers once each and makes 24. The grade-school set (arithmetic word problems whose difficulty is
the number of operations) and the arithmetic set (bare expressions from easy to impossible for a
small model) are generated from a seed, so their answers are known exactly.
"""
from __future__ import annotations

import ast
import csv
import json
import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from scheduler_backend.answers import answers_equal, extract_answer
from scheduler_backend.code_behaviour import passes_tests

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DATASETS: tuple[str, ...] = ("gsm8k", "math500", "aime24", "game24", "grade-school", "arithmetic", "humaneval")


@dataclass(frozen=True)
class Problem:
    dataset: str
    id: str
    question: str
    gold: str | None  # None where answers are checked, not looked up (Game of 24)
    level: int = 0  # difficulty where the set grades it (MATH level, grade-school operations)
    numbers: tuple[int, ...] = ()  # Game of 24: the four numbers an answer must use
    tests: str = ""  # HumanEval: the hidden `check(candidate)` tests, for grading only
    entry_point: str = ""  # HumanEval: the function the tests call


def _gsm8k(split: str) -> list[Problem]:
    rows = load_records(DATA_DIR / "gsm8k" / f"{split}.jsonl")
    return [Problem("gsm8k", f"{split}/{i}", r["question"], (gold_answer(r) or "").replace(",", ""))
            for i, r in enumerate(rows)]


def _math500(split: str) -> list[Problem]:
    return [Problem("math500", r["unique_id"], r["problem"], r["answer"], r["level"])
            for r in load_records(DATA_DIR / "math500" / "test.jsonl")]


def _aime24(split: str) -> list[Problem]:
    return [Problem("aime24", str(r["id"]), r["problem"], str(int(r["answer"])))
            for r in load_records(DATA_DIR / "aime24" / "test.jsonl")]


def game24_question(numbers: str) -> str:
    return (f"Use the numbers {numbers} and the operations +, -, *, / (with parentheses) to make 24. "
            "Use each number exactly once. Give the expression as the answer.")


def _game24(split: str) -> list[Problem]:
    """The Tree-of-Thoughts test split is ranks 901-1000; `train` is the other ranks."""
    with open(DATA_DIR / "game24" / "24.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if 901 <= int(r["Rank"]) <= 1000]
    chosen = test if split == "test" else [r for r in rows if r not in test]
    return [Problem("game24", r["Rank"], game24_question(r["Puzzles"]), None, numbers=tuple(map(int, r["Puzzles"].split())))
            for r in chosen]


def _humaneval(split: str) -> list[Problem]:
    """OpenAI's HumanEval: the question is the prompt (signature and docstring), graded by running
    its hidden tests in the sandbox; one split (traces split it by hash, `traces.split_of`)."""
    return [Problem("humaneval", r["task_id"], r["prompt"], None, tests=r["test"], entry_point=r["entry_point"])
            for r in load_records_raw(DATA_DIR / "humaneval" / "test.jsonl")]


def load_records_raw(path: Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file, as it is."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def gold_answer(record: dict[str, Any]) -> str | None:
    """GSM8K keeps its answer after '####' in a worked solution; MATH and AIME give it plainly."""
    answer = record.get("answer")
    if answer is None:
        return None
    answer = str(answer)
    return extract_answer(answer, "gsm8k") if "####" in answer else answer


def load_records(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The file's records in order (the first `limit`), each checked to carry a question."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not (record.get("question") or record.get("problem")):
                raise ValueError(f"{path}:{n}: expected a JSON object with 'question' or 'problem'")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    return records


_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon")
_ITEMS = ("apples", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "cards")


def grade_school(count: int, seed: int = 0, max_ops: int = 6) -> list[Problem]:
    """Word problems of 1..max_ops operations (add, give away, buy packs, share equally) whose every
    intermediate value is a whole number; `level` is the number of operations."""
    rng = random.Random(seed)
    problems = []
    for i in range(count):
        ops = 1 + i % max_ops
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        value = rng.randint(5, 40)
        sentences = [f"{name} has {value} {item}."]
        for _ in range(ops):
            kind = rng.choice(("add", "remove", "packs", "share") if value > 3 else ("add", "packs"))
            if kind == "add":
                n = rng.randint(2, 30)
                value += n
                sentences.append(f"A friend gives {name} {n} more {item}.")
            elif kind == "remove":
                n = rng.randint(1, value - 1)
                value -= n
                sentences.append(f"{name} gives away {n} {item}.")
            elif kind == "packs":
                packs, per = rng.randint(2, 5), rng.randint(2, 9)
                value += packs * per
                sentences.append(f"{name} buys {packs} packs with {per} {item} in each pack.")
            else:
                divisors = [d for d in (2, 3, 4, 5) if value % d == 0]
                if not divisors:
                    n = rng.randint(2, 12)
                    value += n
                    sentences.append(f"{name} finds {n} more {item}.")
                    continue
                d = rng.choice(divisors)
                value //= d
                sentences.append(f"{name} shares the {item} equally among {d} boxes and keeps one box.")
        sentences.append(f"How many {item} does {name} have now?")
        problems.append(Problem("grade-school", f"{seed}/{i}", " ".join(sentences), str(value), ops))
    return problems


def _grade_school(split: str) -> list[Problem]:
    return grade_school(200, seed=0 if split == "test" else 1)


def arithmetic(count: int, seed: int = 0, max_level: int = 8) -> list[Problem]:
    """Bare arithmetic of graded difficulty: level L has L + 1 operands of 1 + L // 2 digits and
    more multiplications as L grows, so a small model finds the low levels easy, scales with more
    samples in the middle and cannot do the top ones (the paper's easy, scaling and impossible
    zones). Answers are exact integers."""
    rng = random.Random(seed)
    problems = []
    for i in range(count):
        level = 1 + i % max_level
        digits = 1 + level // 2
        operands = [rng.randint(10 ** (digits - 1) + 1, 10**digits - 1) for _ in range(level + 1)]
        ops = [rng.choice("+-*" if rng.random() < level / max_level else "+-") for _ in range(level)]
        expr = " ".join(f"{a} {op}" for a, op in zip(operands, ops)) + f" {operands[-1]}"
        exact = _expression_value(expr)
        assert exact is not None
        problems.append(Problem("arithmetic", f"{seed}/{i}", f"What is {expr}?", str(exact[0]), level))
    return problems


def _arithmetic(split: str) -> list[Problem]:
    return arithmetic(200, seed=0 if split == "test" else 1)


_LOADERS = {"gsm8k": _gsm8k, "math500": _math500, "aime24": _aime24, "game24": _game24, "grade-school": _grade_school,
            "arithmetic": _arithmetic, "humaneval": _humaneval}


def load(dataset: str, split: str = "test", limit: int | None = None) -> list[Problem]:
    """The first `limit` problems of a set's split (`test`, or `train` where one exists)."""
    if dataset not in _LOADERS:
        raise ValueError(f"dataset: must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if split not in ("test", "train") or (split == "train" and dataset in ("math500", "aime24", "humaneval")):
        raise ValueError(f"split: {dataset} has no {split!r} split")
    return _LOADERS[dataset](split)[:limit]


def _expression_value(expr: str) -> tuple[Fraction, list[int]] | None:
    """Exact value and the numbers of an arithmetic expression, or None if it is anything else."""
    expr = expr.replace("\\times", "*").replace("×", "*").replace("\\div", "/").replace("÷", "/")
    expr = expr.split("=")[0].strip()
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    numbers: list[int] = []

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            numbers.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if b == 0:
                raise ZeroDivisionError
            return a / b
        raise ValueError("not arithmetic")

    try:
        return ev(tree.body), numbers
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def is_correct(problem: Problem, answer: str | None) -> bool:
    """Gold answers compare by value; Game of 24 checks the expression itself; HumanEval runs its
    hidden tests on the answer's program in the sandbox."""
    if answer is None:
        return False
    if problem.dataset == "humaneval":
        return passes_tests(answer, problem.tests, problem.entry_point)
    if problem.dataset == "game24":
        got = _expression_value(answer)
        return got is not None and got[0] == 24 and Counter(got[1]) == Counter(problem.numbers)
    return problem.gold is not None and answers_equal(answer, problem.gold)
