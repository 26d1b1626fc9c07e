"""Chat requests written by the target itself (training/chat_prompts.py) and ``train-drafter
--chat-prompts``: the user-turn header cut from the chat template, the filter on what the target
wrote, the seeded loop and its bound, and the pipeline writing, mixing in and reusing the requests
and their answers. The default model's tokenizer; scripted ``generate`` stubs (what they return
is decided by the test, so every kept or dropped request is known), a tiny random target to train."""

from __future__ import annotations

import copy
import gzip
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_hf_model

from agentspark.datasets import PromptRecord
from agentspark.errors import InvalidRequestError
from agentspark.model.loading import resolve_source
from agentspark.training.chat_prompts import (CHAT_DATASET, ChatPromptParams, generate_chat_prompts, load_chat_prompts,
                                              markup_strings, prefix_ids, user_turn_prefix)
from agentspark.training.data import prompt_ids_for

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SMOL_HEADER = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\n")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_source("default")[0]))  # the default model's, no weights


class Scripted:
    """An HF model's ``generate``: each row answers the next scripted token list (after the
    prompt); once the script is spent, rows that never close their turn. As in HF, a row that
    closed its turn is padded after it and one that did not runs to the batch's length (here with
    the filler: SmolLM2's pad token is its end-of-turn token). Records every call."""

    def __init__(self, rows: list[list[int]], filler: int):
        self.rows, self.filler, self.calls = list(rows), filler, []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        yield self.weight

    def generate(self, input_ids, attention_mask, **kw):
        self.calls.append((input_ids.clone(), kw))
        tails = [self.rows.pop(0) if self.rows else [self.filler] * 5 for _ in range(input_ids.shape[0])]
        width = max(len(t) for t in tails)
        pad, eot = kw["pad_token_id"], kw["eos_token_id"]
        tail = torch.tensor([t + [pad if eot in t else self.filler] * (width - len(t)) for t in tails])
        return torch.cat([input_ids, tail], dim=1)


# ---- the user-turn header -----------------------------------------------------------------------

def test_prefix_is_the_templates_text_before_the_user_content(tokenizer):
    assert user_turn_prefix(tokenizer) == SMOL_HEADER  # the default system prompt, then the user header
    ids = prefix_ids(tokenizer)
    full = prompt_ids_for(tokenizer, "Tell me a story about a lighthouse.")
    # the very tokens a real request's prompt starts with, and nothing of its content
    assert full[: len(ids)] == ids and tokenizer.decode(full[len(ids):]).startswith("Tell me a story")
    assert ids[-2:] == tokenizer.encode("user\n", add_special_tokens=False)
    # another template: its own header (derived, not ChatML's)
    other = copy.deepcopy(tokenizer)
    other.chat_template = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                           "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}")
    assert user_turn_prefix(other) == "<|im_start|><|start_header_id|>user<|end_header_id|>\n\n"
    # a template that does not render the content as given has no place to cut
    other.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | lower }}{% endfor %}"
    with pytest.raises(InvalidRequestError, match="cannot find where a user request starts"):
        user_turn_prefix(other)


# ---- the filter and the loop --------------------------------------------------------------------

def test_requests_are_kept_only_closed_long_new_and_free_of_markup(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    script = [
        enc("What is a good name for a grey cat?") + [eot],                   # kept
        enc("Tell me about the history of Rome and its emperors"),            # never closed its turn
        enc("Hi there") + [eot],                                               # 8 characters: too short
        enc("  what is a GOOD name for\n a grey   cat? ") + [eot],              # the first, case/space folded
        enc("Write a poem") + [tokenizer.convert_tokens_to_ids("<|im_start|>")] + enc("assistant\nSure") + [eot],
        # chat markup spelled with ordinary tokens (no special id): the template would re-read it
        tokenizer.encode("List three rivers <|im_start|> please", add_special_tokens=False,
                         split_special_tokens=True) + [eot],
        enc("Explain how photosynthesis works in plants.") + [eot] + enc("<|im_start|> junk after the turn"),  # kept
        enc("Describe a sunny day at the beach in detail.") + [eot],         # kept
    ]
    assert "<|im_start|>" in markup_strings(tokenizer) and "<|im_end|>" in markup_strings(tokenizer)
    assert not set(script[5][:-1]) & set(tokenizer.all_special_ids)  # really no special id: the text is caught
    model = Scripted(script, filler=enc("x")[0])
    seen = []
    params = ChatPromptParams(prompts=4, batch_size=8, attempts=4, seed=3)
    records = generate_chat_prompts(model, tokenizer, params, progress=seen.append)
    assert [r.turns for r in records] == [("What is a good name for a grey cat?",),
                                          ("Explain how photosynthesis works in plants.",),
                                          ("Describe a sunny day at the beach in detail.",)]
    assert {r.dataset for r in records} == {CHAT_DATASET}
    # 3 of 4 kept: it went on until 4 x 4 generations were spent (8 scripted rows, then 8 unclosed), no more
    assert [c[0].shape[0] for c in model.calls] == [8, 8] and seen == [3, 0]
    prefix = prefix_ids(tokenizer)
    for ids, kw in model.calls:  # every row is the user-turn header alone, sampled as stated
        assert ids.tolist() == [prefix] * ids.shape[0]
        assert kw == dict(max_new_tokens=96, pad_token_id=tokenizer.pad_token_id, eos_token_id=eot, do_sample=True,
                          temperature=1.0, top_p=0.95, top_k=0)
    # enough kept: it stops there (the fourth valid row is not taken, no second call)
    model = Scripted([enc("Name a famous painting from Spain.") + [eot]] * 2 + [enc("Why is the sky blue, really?") + [eot]]
                     + [enc("Suggest a name for a small bakery.") + [eot]], filler=enc("x")[0])
    records = generate_chat_prompts(model, tokenizer, ChatPromptParams(prompts=2, batch_size=4), progress=seen.append)
    assert [r.turns[0] for r in records] == ["Name a famous painting from Spain.", "Why is the sky blue, really?"]
    assert len(model.calls) == 1 and seen[-1] == 2


def test_requests_are_seeded(tokenizer):
    """The loop seeds torch once (a stub that draws its rows from torch's generator shows it)."""
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts = [tokenizer.encode(f"Please tell me one fact about the number {i}.", add_special_tokens=False) + [eot]
             for i in range(200)]

    class Drawing(Scripted):
        def generate(self, input_ids, attention_mask, **kw):
            self.rows = [texts[int(i)] for i in torch.randint(0, len(texts), (input_ids.shape[0],))]
            return super().generate(input_ids, attention_mask, **kw)

    def run(seed, before):
        torch.manual_seed(before)  # whatever the global generator held before must not matter
        return [r.turns[0] for r in generate_chat_prompts(Drawing([], 0), tokenizer,
                                                          ChatPromptParams(prompts=5, batch_size=4, seed=seed))]

    assert run(7, before=1) == run(7, before=2) and run(7, before=1) != run(8, before=1)


# ---- train-drafter --chat-prompts ---------------------------------------------------------------

class ChatTarget(Scripted):
    """The HF copy the pipeline loads: rows that are the user-turn header alone get a numbered
    request, every other row (a prompt to answer) gets a short answer. Counts both kinds."""

    def __init__(self, tokenizer):
        super().__init__([], 0)
        self.tok, self.written, self.answered = tokenizer, 0, 0
        self.eot = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(self, input_ids, attention_mask, **kw):
        header = prefix_ids(self.tok)
        for row in input_ids.tolist():
            if row == header:
                self.written += 1
                text = f"Please describe place number {self.written} in a few sentences."
            else:
                self.answered += 1
                text = "Here is a short answer."
            self.rows.append(self.tok.encode(text, add_special_tokens=False) + [self.eot])
        return super().generate(input_ids, attention_mask, **kw)


def test_train_drafter_writes_answers_mixes_and_reuses_chat_prompts(tokenizer, tmp_path, monkeypatch):
    from agentspark.cli import main
    from agentspark.training import pipeline
    from agentspark.training.data import load_samples

    hf = tiny_hf_model("llama", seed=5, vocab_size=len(tokenizer), max_position_embeddings=4096)
    folder = tmp_path / "tiny"
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    stub = ChatTarget(tokenizer)
    loads = []
    monkeypatch.setattr(pipeline, "load_hf_copy", lambda spec, target: loads.append(spec) or stub)
    prompts = tmp_path / "train.jsonl"
    prompts.write_text("".join(json.dumps({"turns": [q]}) + "\n" for q in ["What is 12 + 30?", "Name a prime."]))
    out = tmp_path / "run"
    args = ["train-drafter", "--target", str(folder), "--prompts", str(prompts), "--out", str(out),
            "--steps", "4", "--batch-size", "2", "--anchors", "4", "--max-length", "256", "--num-features", "2",
            "--markov-rank", "4", "--regen-max-new-tokens", "6", "--regen-batch-size", "3", "--held-out", "0",
            "--chat-prompts", "3",
            "--stop-at-step", "2"]
    assert main(args) == 0
    data = out / "data"
    lines = [json.loads(line) for line in (data / "chat_prompts.jsonl").read_text().splitlines()]
    assert lines == [{"dataset": CHAT_DATASET, "turns": [f"Please describe place number {i} in a few sentences."]}
                     for i in (1, 2, 3)]
    chat = load_samples(data / "chat_samples.jsonl")
    assert len(chat) == 3 and {s.dataset for s in chat} == {CHAT_DATASET}
    for s, line in zip(chat, lines):  # each request answered like a training prompt: prompt masked, answer in
        first = s.loss_mask.index(1)
        assert s.input_ids[:first] == prompt_ids_for(tokenizer, line["turns"][0])
        assert tokenizer.decode(s.input_ids[first:]) == "Here is a short answer.<|im_end|>"
    assert stub.written == 3 and stub.answered == 2 + 3  # the training prompts and the chat requests
    assert len(loads) == 2  # one HF copy for the regeneration, one for the chat data
    report = json.loads((out / "report.json").read_text())
    assert report["chat_prompts"] == 3 and report["chat_samples"] == 3 and report["samples"] == 2 + 3
    assert report["recipe"]["chat"]["prompts"] == 3 and report["chat_prompts_s"] >= 0 and not report["finished"]

    # --resume: both files reused, the target asked for nothing
    stamps = {f: (data / f).stat().st_mtime_ns for f in ("chat_prompts.jsonl", "chat_samples.jsonl")}
    calls = len(stub.calls)
    assert main([*args[:-2], "--resume"]) == 0
    assert len(stub.calls) == calls and len(loads) == 2 and {f: (data / f).stat().st_mtime_ns for f in stamps} == stamps
    report = json.loads((out / "report.json").read_text())
    assert report["finished"] and report["chat_prompts"] == 3 and report["chat_samples"] == 3
    assert report["samples"] == 5


def test_chat_prompts_travel_gzipped_and_are_answered_not_rewritten(tokenizer, tmp_path, monkeypatch):
    """Only the requests came back (in gzip parts, like samples): they are answered, not written again."""
    from agentspark.training import pipeline
    from agentspark.training.chat_prompts import save_chat_prompts
    from agentspark.training.pipeline import DrafterRecipe, chat_samples

    stub = ChatTarget(tokenizer)
    monkeypatch.setattr(pipeline, "load_hf_copy", lambda spec, target: stub)
    asked = [f"Tell me something about harbour number {i}, please." for i in range(3)]
    plain = tmp_path / "plain.jsonl"
    save_chat_prompts([PromptRecord(CHAT_DATASET, (q,)) for q in asked], plain)
    raw = gzip.compress(plain.read_bytes())
    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    for i, part in enumerate((raw[:10], raw[10:])):
        (data / f"chat_prompts.jsonl.gz.part-{i:03d}").write_bytes(part)
    assert [r.turns[0] for r in load_chat_prompts(data / "chat_prompts.jsonl")] == asked

    target = SimpleNamespace(tokenizer=tokenizer, model=SimpleNamespace(device=torch.device("cpu")))  # what it reads
    recipe = DrafterRecipe(chat=ChatPromptParams(prompts=3))
    n, samples = chat_samples("tiny", target, tmp_path / "out", recipe, log=lambda m: None, progress_factory=None)
    assert n == 3 and len(samples) == 3 and stub.written == 0 and stub.answered == 3
    assert [s.input_ids[: s.loss_mask.index(1)] for s in samples] == [prompt_ids_for(tokenizer, q) for q in asked]
    assert (data / "chat_samples.jsonl").is_file() and not (data / "chat_prompts.jsonl").exists()
    # 0 (the default): nothing read, nothing loaded
    assert chat_samples("tiny", target, tmp_path / "out", DrafterRecipe(), log=print, progress_factory=None) == (0, [])


def test_chat_prompts_option_is_a_count(capsys, tmp_path):
    from agentspark.cli import build_parser, main

    (tmp_path / "p.jsonl").write_text('{"turns": ["hi"]}\n')
    for bad, why in (("-1", "must be an integer >= 0"), ("two", "expected an integer"), ("1.5", "expected an integer")):
        code = main(["train-drafter", "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"),
                     "--chat-prompts", bad])
        err = capsys.readouterr().err
        assert code == 2 and f"argument --chat-prompts: {why}" in err, (bad, err)
    assert not (tmp_path / "o").exists()
    base = ["train-drafter", "--prompts", "p.jsonl", "--out", "o"]
    assert build_parser().parse_args(base).chat_prompts == 0  # off unless asked
    assert build_parser().parse_args([*base, "--chat-prompts", "5"]).chat_prompts == 5
