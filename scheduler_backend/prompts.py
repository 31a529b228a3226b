"""How a program asks the model to solve a question: one named prompt per kind of task, chosen on
training questions only (GSM8K train, Game of 24 ranks outside the test split), never on the test
questions that the accuracy table reports (docs/results: `make bench-accuracy`).

`math` is the competition-math prompt (LaTeX answers in \\boxed{}); `grade-school` shows the model
four worked GSM8K *train* solutions that end "The answer is N." (short chains, an explicit final
marker, so fewer samples run to the token cap without an answer); `game24` shows three solved
training puzzles.
"""
from __future__ import annotations

from scheduler_backend.engine import ChatMessage

PROMPTS: tuple[str, ...] = ("grade-school", "math", "game24")

_MATH_SYSTEM = "Solve the following problem step by step. Put the final answer in \\boxed{}."
_GRADE_SCHOOL_SYSTEM = ("Solve the math word problem. Reason in short steps, one calculation per line, "
                        "and end with \"The answer is N.\" where N is a number.")
# GSM8K train records 0, 1, 2 and 4, with the calculator annotations removed.
_GRADE_SCHOOL_SHOTS = (
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
     "How many clips did Natalia sell altogether in April and May?",
     "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n"
     "The answer is 72."),
    ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
     "How much did she earn?",
     "Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.\nThe answer is 10."),
    ("Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
     "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
     "How much more money does Betty need to buy the wallet?",
     "In the beginning, Betty has only 100 / 2 = $50.\nBetty's grandparents gave her 15 * 2 = $30.\n"
     "This means, Betty needs 100 - 50 - 30 - 15 = $5 more.\nThe answer is 5."),
    ("James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
     "He writes each friend 3*2 = 6 pages a week.\nSo he writes 6*2 = 12 pages every week.\n"
     "That means he writes 12*52 = 624 pages a year.\nThe answer is 624."),
)
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
    elif prompt == "grade-school":
        messages = (ChatMessage("system", _GRADE_SCHOOL_SYSTEM),)
        for q, a in _GRADE_SCHOOL_SHOTS:
            messages += (ChatMessage("user", q), ChatMessage("assistant", a))
        messages += (ChatMessage("user", question),)
    elif prompt == "game24":
        from scheduler_backend.datasets import game24_question

        messages = (ChatMessage("system", _GAME24_SYSTEM),)
        for numbers, a in _GAME24_SHOTS:
            messages += (ChatMessage("user", game24_question(numbers)), ChatMessage("assistant", a))
        messages += (ChatMessage("user", question),)
    else:
        raise ValueError(f"prompt: must be one of {', '.join(PROMPTS)}; got {prompt!r}")
    return messages + (ChatMessage("assistant", partial),) if partial else messages
