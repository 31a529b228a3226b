"""What the `policy` model and the direct engine both do to vLLM's text: the chat template on the
way in, the per-token top logprobs on the way out. One copy, so both paths send the model the
same prompt and return the same logprob form."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """Chat template; a final assistant message is continued, not closed (probing a thought)."""
    continue_last = messages[-1]["role"] == "assistant"
    text: str = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        tokenize=False,
        add_generation_prompt=not continue_last,
        continue_final_message=continue_last,
    )
    return text


def top_logprobs(completion: Any) -> list[dict[str, float]]:
    """One {token: logprob} map per generated token of a vLLM CompletionOutput (empty when the
    request asked for no logprobs)."""
    return [{lp.decoded_token: lp.logprob for lp in step.values()} for step in (completion.logprobs or [])]
