"""Chat requests written by the target itself ("Magpie" self-instruct), for open-chat training data.

The training prompts are math and code, so a drafter trained on their answers is weak on open
chat. Rather than bring in a chat data set (and its license), the target writes the requests: it
is given its chat template's text up to and including the user turn's header only (for ChatML
the rendered default system prompt, if any, then ``<|im_start|>user\\n``), and what it samples
next is a user request in its own distribution. The pipeline then answers those requests with
``regenerate`` like any training prompt.

The header is derived from the template, never hard-coded: a user turn whose content is a
sentinel is rendered and cut at the sentinel. Sampling: temperature 1.0, top-p 0.95, top-k off
(0): the whole nucleus, so requests vary (Magpie samples at T 1 too); at most 96 new tokens,
stopping at the end-of-turn token. A request is kept only if the target closed its turn (a request
cut off by the token limit is no request), it is at least 16 characters after stripping, it is no
duplicate (case and whitespace folded) of one kept, and it holds none of the tokenizer's special
tokens as text (chat markup inside a user turn would be re-read as markup by the template).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..datasets import PromptRecord
from ..errors import InvalidRequestError
from .data import end_of_turn_id, read_stored

CHAT_DATASET = "self-chat"
# what the user turn's content is rendered as to find where it starts: plain ASCII letters, so no
# template escapes, trims or splits it
SENTINEL = "AGENTSPARKUSERCONTENTSENTINEL"


@dataclass(frozen=True)
class ChatPromptParams:
    """How the requests are written (the module says why these values); their answers follow RegenParams."""

    prompts: int = 0  # requests to keep (0: none)
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0  # off: top-p alone bounds the tail
    max_new_tokens: int = 96
    batch_size: int = 64
    seed: int = 42
    min_chars: int = 16  # a few words at least: "Hi" or "Help" teaches nothing about answers
    attempts: int = 4  # generations per request asked, at most: bounds what a target that rarely closes its turn costs


def user_turn_prefix(tokenizer: Any) -> str:
    """The chat template's text before a user turn's content (the default system prompt, if the
    template adds one, and the user turn's header)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False)
    if not isinstance(text, str) or SENTINEL not in text:
        raise InvalidRequestError("the chat template does not render a user turn's text as given: "
                                  "cannot find where a user request starts")
    return text[: text.index(SENTINEL)]


def prefix_ids(tokenizer: Any) -> list[int]:
    # no special tokens added: the template's text already holds every one it wants (like
    # apply_chat_template's own tokenization)
    return list(tokenizer.encode(user_turn_prefix(tokenizer), add_special_tokens=False))


def markup_strings(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens as text (ChatML's ``<|im_start|>``, ``<|im_end|>``, ...)."""
    found = set(getattr(tokenizer, "all_special_tokens", []))
    found |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    return sorted(s for s in found if s)


def request_text(generated: list[int], tokenizer: Any, eot: int, markup: list[str], min_chars: int) -> str | None:
    """The request in one generated row, or None when it is not kept (see the module's rules; the
    duplicate check is the caller's)."""
    if eot not in generated:
        return None
    ids = generated[: generated.index(eot)]
    raw = tokenizer.decode(ids, skip_special_tokens=False)  # special ids decode to their markup text
    if any(m in raw for m in markup):
        return None
    text = raw.strip()
    return text if len(text) >= min_chars else None


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def generate_chat_prompts(hf_model: Any, tokenizer: Any, params: ChatPromptParams, *,
                          progress: Any = None) -> list[PromptRecord]:
    """Up to ``params.prompts`` requests written by the target (HF ``generate``, batched), as
    one-turn records of dataset ``self-chat``; fewer when ``attempts`` x ``prompts`` generations
    did not give that many. ``progress(n)``: called with the number kept by each batch."""
    if params.prompts < 1:
        raise InvalidRequestError(f"chat prompts must be at least 1, got {params.prompts}")
    prefix = prefix_ids(tokenizer)
    eot = end_of_turn_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    markup = markup_strings(tokenizer)
    device = next(hf_model.parameters()).device
    budget = params.attempts * params.prompts
    torch.manual_seed(params.seed)
    kept: list[str] = []
    seen: set[str] = set()
    spent = 0
    while len(kept) < params.prompts and spent < budget:
        rows = min(params.batch_size, budget - spent)
        # every row is the same prefix, so the left-padded batch of ``regenerate`` has no padding here
        ids = torch.tensor([prefix] * rows, dtype=torch.long, device=device)
        with torch.no_grad():
            out = hf_model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_new_tokens,
                pad_token_id=pad, eos_token_id=eot, do_sample=True, temperature=params.temperature,
                top_p=params.top_p, top_k=params.top_k,
            )
        spent += rows
        before = len(kept)
        for row in out[:, len(prefix) :].tolist():
            text = request_text(row, tokenizer, eot, markup, params.min_chars)
            if text is None or normalized(text) in seen or len(kept) >= params.prompts:
                continue
            seen.add(normalized(text))
            kept.append(text)
        if progress is not None:
            progress(len(kept) - before)
    return [PromptRecord(dataset=CHAT_DATASET, turns=(t,)) for t in kept]


def save_chat_prompts(records: list[PromptRecord], path: Path) -> None:
    """DeepSpec's prompt format, one ``{"turns": [...]}`` per line (with the dataset's name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"dataset": r.dataset, "turns": list(r.turns)}) + "\n")


def load_chat_prompts(path: Path) -> list[PromptRecord]:
    """What ``save_chat_prompts`` wrote, read from ``path``, ``path.gz`` or its parts (like samples)."""
    records: list[PromptRecord] = []
    try:
        for line in read_stored(path).splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            turns = row["turns"]
            if not isinstance(turns, list) or not turns:
                raise TypeError(f"turns is {turns!r}, not a list of turns")
            records.append(PromptRecord(dataset=str(row.get("dataset", CHAT_DATASET)), turns=tuple(str(t) for t in turns)))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:
        raise InvalidRequestError(f"{path} is not a chat prompts file written by train-drafter: {exc}") from exc
    return records
