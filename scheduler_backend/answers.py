"""Final answers: pulled out of model text, put in canonical form, and compared by value, so that
programs vote on what the samples mean rather than on how they spell it."""
from __future__ import annotations

import functools
import math
import multiprocessing
import re
import threading
from collections.abc import Callable, Sequence
from decimal import Context, Decimal
from fractions import Fraction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

ANSWER_FORMATS: tuple[str, ...] = ("auto", "gsm8k", "boxed", "answer-is", "number")

# A code sample's answer is its behaviour (code_behaviour.fingerprint): equal only when identical.
BEHAVIOUR_PREFIX = "behaviour:"

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS_RE = re.compile(r"the\s+answer\s+is|final\s+answer\s+is|final\s+answer\s*:", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)")


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` closing a group opened just before `start`; escaped `\\{ \\}` are literal."""
    depth, i = 1, start
    while i < len(text):
        depth += (text[i] == "{") - (text[i] == "}")
        if depth == 0:
            return i
        i += 2 if text[i] == "\\" else 1
    return None


def _boxed(text: str) -> str | None:
    for m in reversed(list(_BOXED_RE.finditer(text))):
        end = _closing_brace(text, m.end())
        if end is not None and text[m.end():end].strip():
            return text[m.end():end].strip()
    return None


def _gsm8k(text: str) -> str | None:
    lines = text.rpartition("####")[2].strip().splitlines() if "####" in text else []
    return (lines[0].strip() or None) if lines else None


def _answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    rest = re.sub(r"^[\s:*]*", "", text[matches[-1].end():])
    rest = re.split(r"\.\s", rest.split("\n")[0])[0]
    if (boxed := _boxed(rest)) is not None:
        return boxed
    rest = re.sub(r"^\\[(\[]|\\[)\]]$", "", rest.lstrip(" \t$*").rstrip(" \t$*.")).strip(" \t$*")
    return rest or None


def _last_number(text: str) -> str | None:
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


_EXTRACTORS = {"boxed": _boxed, "gsm8k": _gsm8k, "answer-is": _answer_is, "number": _last_number}


def extract_answer(text: str, fmt: str = "auto") -> str | None:
    """The final answer as the task's format writes it; `auto` tries the most explicit markers first."""
    if fmt == "auto":
        return next((a for f in ("boxed", "gsm8k", "answer-is", "number") if (a := _EXTRACTORS[f](text))), None)
    if fmt not in _EXTRACTORS:
        raise ValueError(f"unknown answer_format {fmt!r}; expected one of {ANSWER_FORMATS}")
    return _EXTRACTORS[fmt](text)


def extract_probe_answer(text: str) -> str | None:
    """A probe's prompt already opened `\\boxed{`, so its answer ends at the first unmatched `}`."""
    end = _closing_brace(text, 0)
    return (text[:end].strip() or None) if end is not None else None


_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_DROP_RE = re.compile(
    r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|(?<!\\)\\[!,;:]|\\displaystyle|\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\?[$%]"
)
_FRAC_ARG = r"(\d|\{\d+\})"
_UNIT_RE = re.compile(rf"^(-?(?:\d[\d,]*(?:\.\d*)?|\.\d+)|-?\\frac{_FRAC_ARG}{_FRAC_ARG})"
                      r"\s+[a-zA-Z]{2,}\.?(?:\s+[a-zA-Z]+\.?)*(?:\^\{?\d\}?)?$")
_SPACE_RE = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])|\s+")


def normalize_answer(ans: str) -> str:
    """One spelling per value for the common cases, so most comparisons are plain string equality."""
    s = ans.strip()
    while (t := _TEXT_CMD_RE.sub(r"\1", s)) != s:
        s = t
    s = _DROP_RE.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").strip().rstrip(".").strip()
    if s.count("=") == 1:
        s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)
    s = _UNIT_RE.sub(lambda m: m.group(1), s)
    s = _SPACE_RE.sub(lambda m: m.group(1) + " " if m.group(1) else "", s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d*)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)", s):
        s = format(Decimal(s).normalize(Context(prec=len(s))), "f")  # the default 28 digits would round
    return s


def _to_number(s: str) -> Fraction | None:
    """Exact value of a plain number, `a/b`, `\\frac{a}{b}` or mixed number `1\\frac{4}{5}`."""
    if m := re.fullmatch(r"(-?(?:\d+\.?\d*|\.\d+))(?:/(\d+))?", s):
        den = int(m.group(2) or 1)
        return Fraction(m.group(1)) / den if den else None
    if (m := re.fullmatch(rf"(-?)(\d*)\\frac{_FRAC_ARG}{_FRAC_ARG}", s)) and int(m.group(4).strip("{}")):
        value = int(m.group(2) or 0) + Fraction(int(m.group(3).strip("{}")), int(m.group(4).strip("{}")))
        return -value if m.group(1) else value
    return None


def _split_top(s: str, sep: str) -> list[str]:
    """`s` split at the `sep`s outside any bracket."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i = i + len(sep)
            continue
        depth += (s[i] in "([{") - (s[i] in ")]}")
        i += 1
    return parts + [s[start:]]


def _bracketed(s: str) -> bool:
    """Whether the bracket opening `s` is the one closing it, as in `(a, b]` but not `(a)(b)`."""
    depth = 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0:
            return i == len(s) - 1 and s[0] in "([" and s[-1] in ")]"
    return False


def _compound(s: str) -> tuple[str, list[str]] | None:
    """(kind, elements) for tuples, intervals, sets, unions, lists and matrices; None for one value.
    Plain braces make a set only around a comma: `{5}` is LaTeX grouping, `{1,2}` a set."""
    if m := re.fullmatch(r"\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}", s, re.DOTALL):
        return "matrix", [e for row in _split_top(m.group(2), "\\\\") for e in _split_top(row, "&")]
    if len(parts := _split_top(s, "\\cup")) > 1:
        return "cup", parts
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", _split_top(s[2:-2], ",")
    if s.startswith("{") and _closing_brace(s, 1) == len(s) - 1 and len(parts := _split_top(s[1:-1], ",")) > 1:
        return "set", parts
    if _bracketed(s) and len(parts := _split_top(s[1:-1], ",")) > 1:
        return s[0] + s[-1], parts
    return ("list", parts) if len(parts := _split_top(s, ",")) > 1 else None


_COMMANDS = {"pi": " pi ", "infty": " oo ", "cdot": "*", "times": "*", "div": "/", "ln": " log ",
             **{f: f" {f} " for f in ("log", "exp", "sin", "cos", "tan", "cot", "sec", "csc")}}
_NAMES = frozenset(name.strip() for name in _COMMANDS.values() if name.strip().isalpha())


def _arg(s: str, i: int) -> tuple[str, int]:
    """The argument starting at s[i]: a braced group, a command such as `\\pi`, or one character."""
    i = len(s) - len(s[i:].lstrip())
    if i < len(s) and s[i] == "{" and (end := _closing_brace(s, i + 1)) is not None:
        return s[i + 1:end], end + 1
    if i >= len(s) or s[i] == "{":
        raise ValueError(f"missing argument in {s!r}")
    m = re.match(r"\\[a-zA-Z]+|.", s[i:])
    assert m is not None, "any character matches"
    return m.group(), i + len(m.group())


def _to_python(s: str) -> str:
    """Python source for the LaTeX subset answers use: fractions, roots, powers, \\pi, \\cdot."""
    out, i = [], 0
    while i < len(s):
        if not (m := re.match(r"\\([a-zA-Z]+)|[^\\]", s[i:])) or m.group(1) not in (None, "frac", "sqrt", *_COMMANDS):
            raise ValueError(f"unsupported LaTeX at {s[i:]!r}")
        i += len(m.group())
        if m.group(1) == "frac":
            num, i = _arg(s, i)
            den, i = _arg(s, i)
            out.append(f"(({_to_python(num)})/({_to_python(den)}))")
        elif m.group(1) == "sqrt":
            root = "2"
            if s.startswith("[", i):
                root, i = _to_python(s[i + 1:s.index("]", i)]), s.index("]", i) + 1
            body, i = _arg(s, i)
            out.append(f"(({_to_python(body)})**(1/({root})))")
        elif m.group(1):
            out.append(_COMMANDS[m.group(1)])
        elif m.group() == "^":
            exponent, i = _arg(s, i)
            out.append(f"**({_to_python(exponent)})")
        else:
            out.append({"{": "(", "}": ")"}.get(m.group(), m.group()))
    return "".join(out)


@functools.cache
def _sympy() -> tuple[Any, Callable[..., Any]]:
    """sympy, imported on first use (it takes a second) and never inside a deadline."""
    import sympy
    from sympy.parsing.sympy_parser import implicit_multiplication_application, parse_expr, standard_transformations

    symbols = {c: sympy.Symbol(c) for c in "abcdfghjklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    symbols.update(i=sympy.I, e=sympy.E)
    return sympy, functools.partial(parse_expr, local_dict=symbols,
                                    transformations=standard_transformations + (implicit_multiplication_application,))


def _magnitude(expr: Any) -> float:
    """Bound on log10 |value|: big-integer powers hold the GIL, so no timeout could stop them."""
    if expr.is_Number:
        return math.log10(abs(expr.p) + 1) if expr.is_Integer else math.log10(abs(float(expr)) + 1)
    if expr.is_Pow:
        return _magnitude(expr.base) * 10 ** min(_magnitude(expr.exp), 300)
    if expr.is_Mul:
        return sum(_magnitude(a) for a in expr.args)
    return max((_magnitude(a) for a in expr.args), default=1.0) + 1


@functools.lru_cache(maxsize=4096)
def _parse(s: str) -> Any:
    """sympy expression for `s`; the source is checked to hold only arithmetic before parse_expr evals it."""
    source = re.sub(r"(?<![a-zA-Z])(?!pi|oo)([a-zA-Z])([a-zA-Z])(?![a-zA-Z])", r"\1*\2", _to_python(s))
    source = re.sub(r"(?<=[a-zA-Z])(?=\d)", "*", source)
    if (not re.fullmatch(r"[0-9a-zA-Z+\-*/().\s]*", source) or set(re.findall(r"[a-zA-Z]{3,}", source)) - _NAMES
            or re.search(r"[a-zA-Z)]\s*\.|\.\s*[a-zA-Z(]|\(\s*\)", source)):
        raise ValueError(f"not plain arithmetic: {source!r}")
    _, parse = _sympy()
    if _magnitude(parse(source, evaluate=False)) > 1e5:
        raise ValueError(f"too large to evaluate: {source!r}")
    return parse(source)


_DECIMAL_REL_TOL = Fraction(1, 10**6)
_DECIMAL_ABS_TOL = Fraction(1, 10**3)  # far below 1/2: no decimal is within tolerance of two integers
_EXACT_DIGITS = 50
_EXACT_REL_TOL = Fraction(1, 10**30)  # rounding of a 50-digit evaluation, not a difference in value


def _decimal_close(x: Any, y: Any) -> bool:
    """A written decimal may round its value (0.333333333 for 1/3): equal within one part in a
    million, never more than 0.001 apart, so a decimal cannot match two different integers."""
    return bool(abs(x - y) <= min(_DECIMAL_REL_TOL * max(abs(x), abs(y)), _DECIMAL_ABS_TOL))


def _sympy_equal(a: str, b: str) -> bool:
    """Constants compare by value: exact ones exactly (rationals as rationals, others to 30 digits),
    ones with a written decimal within the decimal tolerance. Expressions that agree at a sample
    point must then be proven equal by simplify."""
    sympy, _ = _sympy()
    x, y = _parse(a), _parse(b)
    if any(e.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) for e in (x, y)):
        return False
    symbols = sorted(x.free_symbols | y.free_symbols, key=str)
    if not symbols and x.is_Rational and y.is_Rational:
        return bool(x == y)
    point = {v: sympy.Rational(k + 5, 7) for k, v in enumerate(symbols)}
    vx, vy = (e.evalf(_EXACT_DIGITS, subs=point) for e in (x, y))
    finite = bool(vx.is_finite and vy.is_finite)
    if not symbols:
        if x.has(sympy.Float) or y.has(sympy.Float):
            return finite and _decimal_close(vx, vy)
        return finite and bool(abs(vx - vy) <= _EXACT_REL_TOL * max(abs(vx), abs(vy)))
    if finite and abs(vx - vy) > 1e-6 * max(abs(vx), abs(vy)):
        return False
    return bool(sympy.simplify(x - y) == 0)  # agree at a sample point: now prove it


def _same_elements(xs: list[str], ys: list[str]) -> bool:
    """Set equality: each element of either side equals one of the other, in any order, repeats or not."""
    return (all(any(_equal_normalized(x, y) for y in ys) for x in xs)
            and all(any(_equal_normalized(x, y) for x in xs) for y in ys))


def _equal_normalized(a: str, b: str) -> bool:
    """Value equality of normalized answers: integers and fractions exactly, decimals within
    `_decimal_close`, sets and unions order-free, tuples, intervals, lists and matrices in order,
    anything else by sympy."""
    if a == b:
        return True
    x, y = _to_number(a), _to_number(b)
    if x is not None and y is not None:
        return x == y or ("." in a + b and _decimal_close(x, y))
    ca, cb = _compound(a), _compound(b)
    if ca is None or cb is None:
        return ca is None and cb is None and _sympy_equal(a, b)
    if ca[0] != cb[0]:
        return False
    xs, ys = [normalize_answer(e) for e in ca[1]], [normalize_answer(e) for e in cb[1]]
    if ca[0] in ("set", "cup"):
        return _same_elements(xs, ys)
    return len(xs) == len(ys) and all(_equal_normalized(p, q) for p, q in zip(xs, ys))


def _serve_comparisons(conn: Connection) -> None:
    """The worker process: sympy imported once, then one (a, b) -> bool answer per message."""
    _sympy()
    conn.send("ready")
    while True:
        try:
            a, b = conn.recv()
        except EOFError:
            return
        try:
            result = _equal_normalized(a, b)
        except Exception:
            result = False
        conn.send(result)


class SympyWorker:
    """Runs the sympy comparisons in a child process, one at a time. A comparison past its time
    limit kills the process, the one way to stop sympy for sure (its big-integer arithmetic holds
    the GIL, so no thread can be interrupted); the next comparison starts a fresh process."""

    START_TIMEOUT_S = 120.0  # spawn plus the sympy import, on a loaded machine

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The live worker process's id, or None when none runs."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def equal(self, a: str, b: str, timeout_s: float) -> bool:
        """Whether sympy proves a == b within `timeout_s`; False when it cannot or runs out of time."""
        with self._lock:
            conn = self._connection()
            try:
                conn.send((a, b))
                if conn.poll(timeout_s):
                    return bool(conn.recv())
            except (EOFError, OSError):
                pass
            self._stop()
            return False

    def stop(self) -> None:
        """End the worker process (a later comparison starts another)."""
        with self._lock:
            self._stop()

    def _connection(self) -> Connection:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            return self._conn
        self._stop()
        ctx = multiprocessing.get_context("spawn")
        conn, child = ctx.Pipe()
        process = ctx.Process(target=_serve_comparisons, args=(child,), name="answers-sympy", daemon=True)
        process.start()
        child.close()
        self._process, self._conn = process, conn
        if not conn.poll(self.START_TIMEOUT_S) or conn.recv() != "ready":
            self._stop()
            raise RuntimeError("answers: the sympy worker process did not start")
        return conn

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None


sympy_worker = SympyWorker()


@functools.lru_cache(maxsize=1 << 16)
def _cached_equal(a: str, b: str, timeout_s: float) -> bool:
    if a == b or (_to_number(a) is not None and _to_number(b) is not None):
        return _equal_normalized(a, b)
    return sympy_worker.equal(a, b, timeout_s)


def answers_equal(a: str | None, b: str | None, timeout_s: float = 1.0) -> bool:
    """Same value, however written; None (no answer) never equals anything, not even None.
    Numbers compare here; expressions go to the sympy worker process, which gets `timeout_s`."""
    if a is None or b is None:
        return False
    if a.startswith(BEHAVIOUR_PREFIX) or b.startswith(BEHAVIOUR_PREFIX):
        return a == b
    return _cached_equal(*sorted((normalize_answer(a), normalize_answer(b))), timeout_s)


def cluster_answers(answers: Sequence[str | None]) -> list[list[int]]:
    """Indices grouped by equal answer, largest group first; each answer is tested against group heads."""
    clusters: list[list[int]] = []
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        home = next((c for c in clusters if answers_equal(answers[c[0]], ans)), None)
        if home is None:
            clusters.append([i])
        else:
            home.append(i)
    return sorted(clusters, key=lambda c: (-len(c), c[0]))


def majority_answer(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> tuple[str | None, float]:
    """The heaviest cluster's answer and its share of all weight, missing answers included."""
    weights = [1.0] * len(answers) if weights is None else list(weights)
    if len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    clusters, total = cluster_answers(answers), sum(weights)
    if not clusters:
        return None, 0.0
    best = max(clusters, key=lambda c: sum(weights[i] for i in c))
    return answers[best[0]], (sum(weights[i] for i in best) / total if total > 0 else 0.0)
