"""Turn what a caller gives (text, chat messages or token ids) into prompt token ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import EmptyPromptError, InvalidRequestError

Prompt = str | Sequence[int] | Sequence[dict[str, Any]]


def encode_prompt(tokenizer: Any | None, prompt: Prompt, *, chat: bool = False) -> list[int]:
    """Text is tokenized as is (``chat=True`` wraps it as one user turn); a list of
    ``{"role", "content"}`` dicts goes through the chat template with a generation prompt;
    a list of ints is taken as token ids."""
    if isinstance(prompt, str):
        if not prompt:
            raise EmptyPromptError("the prompt is empty; give some text")
        if tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer; pass token ids instead of text")
        if chat:
            return encode_prompt(tokenizer, [{"role": "user", "content": prompt}])
        return list(tokenizer.encode(prompt))
    items = list(prompt)
    if not items:
        raise EmptyPromptError("the prompt is empty; give some text, messages or token ids")
    if all(isinstance(m, dict) for m in items):
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise InvalidRequestError("this model has no chat template; pass text or token ids")
        ids = tokenizer.apply_chat_template(items, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    if all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        return [int(t) for t in items]
    raise InvalidRequestError("a prompt is text, a list of chat messages (dicts) or a list of token ids")
