"""How a program asks the model to solve a question: one named prompt per kind of task, chosen on
training questions only (GSM8K train, Game of 24 ranks outside the test split), never on the test
questions that the accuracy table reports (`make bench-accuracy`).

`math` asks for step-by-step reasoning and a final answer in \\boxed{}: for word problems and
competition math alike. On 48 GSM8K *train* questions (Qwen2.5-Coder-0.5B, 8 samples) it beat a
4-shot prompt of worked GSM8K train solutions ending "The answer is N." (majority-of-8 33% vs 25%,
per sample 24% vs 15%), whose shorter chains were wrong more often. `game24` shows three solved
training puzzles, since "make 24" has no answer format the model already knows. `code` is the plain
"complete this function" request for HumanEval-style questions (a signature and its docstring).
"""
from __future__ import annotations

from scheduler_backend.datasets import game24_question
from scheduler_backend.engine import ChatMessage

PROMPTS: tuple[str, ...] = ("math", "game24", "code")

_MATH_SYSTEM = "Solve the following problem step by step. Put the final answer in \\boxed{}."
_CODE_SYSTEM = ("Complete the following Python function. Reply with the complete function, its imports included, "
                "in one ```python code block.")
_GAME24_SYSTEM = ("Combine the four numbers with +, -, *, / and parentheses to make exactly 24, using each "
                  "number exactly once. Try a few combinations briefly, then end with "
                  "\"The answer is EXPRESSION.\"")
# Game of 24 training puzzles (ranks 1, 2 and 3, outside the test split 901-1000), solved by search.
_GAME24_SHOTS = (
    ("1 1 4 6", "6 * 4 = 24, and 1 * 1 = 1 keeps it: (6 * 4) * (1 * 1) = 24.\nThe answer is (6 * 4) * (1 * 1)."),
    ("1 1 11 11", "11 + 11 = 22, 22 + 1 + 1 = 24.\nThe answer is 11 + 11 + 1 + 1."),
    ("1 1 3 8", "8 * 3 = 24, and 1 * 1 = 1 keeps it: 8 * 3 * 1 * 1 = 24.\nThe answer is 8 * 3 * 1 * 1."),
)


def solve_messages(question: str, prompt: str = "math", partial: str = "") -> tuple[ChatMessage, ...]:
    """The chat for solving `question` with the named prompt; a non-empty `partial` solution is
    continued by the engine (its last message is the assistant's, left open)."""
    if prompt == "math":
        messages: tuple[ChatMessage, ...] = (ChatMessage("system", _MATH_SYSTEM), ChatMessage("user", question))
    elif prompt == "code":
        messages = (ChatMessage("system", _CODE_SYSTEM), ChatMessage("user", question))
    elif prompt == "game24":
        messages = (ChatMessage("system", _GAME24_SYSTEM),)
        for numbers, a in _GAME24_SHOTS:
            messages += (ChatMessage("user", game24_question(numbers)), ChatMessage("assistant", a))
        messages += (ChatMessage("user", question),)
    else:
        raise ValueError(f"prompt: must be one of {', '.join(PROMPTS)}; got {prompt!r}")
    return messages + (ChatMessage("assistant", partial),) if partial else messages
