"""``agentspark audit --base-url`` against two real ``agentspark serve`` processes over loopback,
one speculative and one ``--plain`` (issue 14): each with the command's defaults (the batch engine,
4 slots), a tiny random model with a character tokenizer so that each process starts in seconds.
The speculative one drafts with a noisy copy of the target (``draft-model:``) and verifies every
drafted token (``--schedule full``), so rounds accept some drafts and reject others, the same ones
on every machine; /metrics shows it drafted and accepted. (Under the default adaptive schedule
what it verifies follows its timings: on a busy 2-core CI runner it drafted in one or two rounds,
8 tokens, and accepted none.) The audit must find every reply identical token for token. Then a planted bug: a
proxy in this process in front of the speculative server that replaces one token of each reply
(its text and logprobs item), audited against the same ``--plain`` process, must be reported at
that token with the reference's top-2 margin, exit 1."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agentspark.backends.remote import RemoteBackend
from agentspark.cli import main
from agentspark.server import create_app, serve_in_thread
from conftest import perturbed, tiny_hf_model
from test_remote_audit import SwapOneToken

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPTS = ["Name three caches.", "What is 12 times 7?", "Write a haiku about tea.", "Say hi."]
MAX_NEW_TOKENS = 24
STARTUP_S = 90.0  # import torch and transformers, load the tiny model: seconds; generous for a busy CI runner


def char_tokenizer():
    """A transformers tokenizer of one token per printable ASCII character (and newline), with
    a ChatML-like template: every token's text is distinct, so a swapped token shows."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars + specials)}, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>",
                                   additional_special_tokens=specials[1:], chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> tuple[Path, Path]:
    """(target, draft): an HF folder each, the draft the target's weights plus noise."""
    tokenizer = char_tokenizer()
    vocab = len(tokenizer)
    target = tiny_hf_model("llama", seed=61, vocab_size=vocab, eos_token_id=vocab - 1, bos_token_id=vocab - 2)
    folders = []
    for name, model in (("target", target), ("draft", perturbed(target, seed=62, scale=0.05))):
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        folders.append(folder)
    return folders[0], folders[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agentspark_exe() -> list[str]:
    beside = Path(sys.executable).with_name("agentspark")  # the venv's bin/, activated or not
    exe = str(beside) if beside.exists() else shutil.which("agentspark")
    return [exe] if exe else [sys.executable, "-m", "agentspark.cli"]


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"agentspark serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"agentspark serve did not answer within {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def servers(model_folders, tmp_path_factory):
    """{"spec": URL, "plain": URL}: two ``agentspark serve`` processes, started together."""
    target, draft = model_folders
    logs = tmp_path_factory.mktemp("logs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # two processes on a 2-core runner
    extra = {"spec": ["--drafter", f"draft-model:{draft}", "--schedule", "full"], "plain": ["--plain"]}
    procs, urls = {}, {}
    try:
        for side, flags in extra.items():
            port = free_port()
            urls[side] = f"http://127.0.0.1:{port}"
            log = logs / f"{side}.log"
            procs[side] = (subprocess.Popen([*agentspark_exe(), "serve", "--model", str(target), "--port", str(port),
                                             "--model-name", "tiny", "--log-level", "warning", *flags],
                                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env), log)
        for side, (proc, log) in procs.items():
            wait_until_serving(proc, urls[side], log)
        yield urls
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"turns": [p], "dataset": "tiny"}) + "\n" for p in PROMPTS))
    return path


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5.0).text
    found = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    assert found, f"{name} not in /metrics:\n{text}"
    return float(found.group(1))


@pytest.mark.timeout(240)
def test_two_serve_processes_audit_identical_and_a_planted_token_is_caught(servers, tmp_path, capsys):
    report_file = tmp_path / "audit.json"
    code = main(["audit", "--base-url", servers["spec"] + "/v1", "--reference-url", servers["plain"] + "/v1",
                 "--prompts", str(prompts_file(tmp_path)), "--max-new-tokens", str(MAX_NEW_TOKENS),
                 "--concurrency", "4", "--out", str(report_file)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert f"verdict: all {len(PROMPTS)} identical" in out
    report = json.loads(report_file.read_text())
    assert report["model"] == report["reference_model"] == "tiny"  # the first each lists
    assert all(o["compared"] == "tokens" and o["reference_tokens"] > 0 for o in report["outcomes"])
    # the speculative process really speculated: drafts proposed, some accepted, some not
    drafted, accepted = (metric(servers["spec"], f"agentspark_{k}_tokens_total") for k in ("drafted", "accepted"))
    assert 0 < accepted < drafted, (drafted, accepted)
    assert metric(servers["plain"], "agentspark_drafted_tokens_total") == 0

    # a planted bug in front of the speculative process: token 5 of every reply replaced
    upstream = RemoteBackend(servers["spec"], "tiny", retries=0)
    planted = SwapOneToken(upstream, 5, "\u00a7")  # a character the tokenizer has no token for
    try:
        with serve_in_thread(create_app(planted, model_name="tiny")) as planted_url:
            code = main(["audit", "--base-url", planted_url, "--reference-url", servers["plain"], "--prompts",
                         str(prompts_file(tmp_path)), "--limit", "1", "--max-new-tokens", str(MAX_NEW_TOKENS),
                         "--out", str(report_file)])
    finally:
        upstream.close()
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "verdict: 1 of 1 diverged" in out and "DIVERGED tiny#0: diverged at token 5" in out
    divergence = json.loads(report_file.read_text())["outcomes"][0]["divergence"]
    assert divergence["by"] == "token" and divergence["position"] == 5
    assert divergence["reference"] == planted.replaced and divergence["candidate"] == "\u00a7"
    assert divergence["margin"] is not None and divergence["margin"] >= 0  # greedy's pick is the reference's best
