"""Shared test seams: tiny random models of each family (ours and transformers' twin), the real
default model, and prompts from the bundled eval sample."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

# The repository's top-level folders (kernels/, tools/, traces/, backends/) install as
# agentspark.kernels etc.; on sys.path as themselves they shadow PyPI packages of those names.
# transformers 5.25 depends on Hugging Face's `kernels` and imports it while reading a tokenizer:
# with `python -m pytest` (the working directory first on sys.path) it found our kernels/ and 382
# tests failed on a fresh clone. So the root leaves sys.path here and in every Python the tests
# start (PYTHONSAFEPATH: no script directory or working directory prepended).
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != _ROOT]
os.environ["PYTHONSAFEPATH"] = "1"
if importlib.util.find_spec("agentspark") is None:
    # Not installed (the GPU machine runs the working tree through PYTHONPATH, with the sibling
    # folders linked into agentspark/): the root comes back last, behind every installed package.
    sys.path.append(str(_ROOT))

if "PYTEST_XDIST_WORKER" in os.environ:
    # Two workers on two cores: one BLAS/OpenMP thread each, or their spinning threads fight
    # (set before numpy and torch load their thread pools).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels are tested under Triton's interpreter, which must be chosen
    # before triton is first imported (agentspark imports it). Nothing else changes: kernels run
    # on CPU tensors only inside kernels.support.cpu_interpreter() (the kernel tests).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from agentspark.model.config import DecoderConfig  # noqa: E402
from agentspark.model.loading import LoadedModel, load_model  # noqa: E402
from agentspark.model.weights import build_model  # noqa: E402

FAMILIES = ("llama", "qwen2", "qwen3")


def hf_config(family: str, **overrides):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
    )
    common.update(overrides)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    if family == "qwen3":
        common.setdefault("head_dim", 24)
    return cls(**common)


def tiny_hf_model(family: str, seed: int = 0, init_std: float = 0.2, **overrides):
    """A transformers model with random weights large enough that its logits are far from ties."""
    from transformers import AutoModelForCausalLM

    cfg = hf_config(family, initializer_range=init_std, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
    return model


def ours_from_hf(hf_model, eos: frozenset[int] = frozenset()) -> LoadedModel:
    cfg = DecoderConfig.from_hf(hf_model.config.to_dict())
    return LoadedModel(build_model(cfg, hf_model.state_dict()), tokenizer=None, source="tiny", eos_token_ids=eos)


def perturbed(loaded_hf, seed: int, scale: float):
    """A draft model: the target's weights plus noise (so drafts are accepted often, not always)."""
    import copy

    draft = copy.deepcopy(loaded_hf)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return draft


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    """The real embedded default (SmolLM2-135M-Instruct, from its GGUF), float32 on the CPU."""
    return load_model("default")


@pytest.fixture(scope="session")
def eval_chat_prompts(default_model) -> list[list[int]]:
    from agentspark.datasets import load_prompts
    from agentspark.prompts import encode_prompt

    records = load_prompts()  # the bundled sample of ../shared/data/prompts/eval
    by_set: dict[str, list] = {}
    for r in records:
        by_set.setdefault(r.dataset, []).append(r)
    mixed = [r for pair in zip(*by_set.values()) for r in pair]  # round-robin over datasets
    return [encode_prompt(default_model.tokenizer, [{"role": "user", "content": r.turns[0]}]) for r in mixed]


class Reference:
    """What a reference run must be reproduced as: its tokens, its text, why it stopped."""

    def __init__(self, token_ids: list[int], text: str, finish_reason: str) -> None:
        self.token_ids, self.text, self.finish_reason = token_ids, text, finish_reason


class References:
    """Plain greedy references, each computed once per test run and shared by the xdist workers
    through files: a worker claims a prompt (an exclusive create), decodes it and writes the
    result; a worker that finds a prompt claimed by the other goes on to the next and reads it
    when it is written. Iteration yields (prompt, reference) in the order they become available
    (every consumer checks each pair on its own). Slicing selects prompts, as on a list."""

    NEW_TOKENS = 128
    WAIT_S = 900.0  # a claim never written (its worker died): decode it here after this long

    def __init__(self, model, prompts: list[list[int]], root: Path, indices: list[int] | None = None) -> None:
        self.model, self.prompts, self.root = model, prompts, root
        self.indices = list(range(len(prompts))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: slice) -> References:
        return References(self.model, self.prompts, self.root, self.indices[key])

    def _decode(self, i: int) -> Reference:
        from agentspark import Engine, SamplingParams

        r = Engine(self.model).generate(self.prompts[i], SamplingParams(max_new_tokens=self.NEW_TOKENS),
                                        speculative=False)
        ref = Reference(r.token_ids, r.text, r.finish_reason)
        tmp = self.root / f"{i}.json.{os.getpid()}"
        tmp.write_text(json.dumps({"token_ids": ref.token_ids, "text": ref.text, "finish_reason": ref.finish_reason,
                                   "prompt": self.prompts[i]}))
        tmp.replace(self.root / f"{i}.json")  # atomic: a reader sees all of it or nothing
        return ref

    def _ready(self, i: int) -> Reference | None:
        path = self.root / f"{i}.json"
        if not path.exists():
            return None
        d = json.loads(path.read_text())
        assert d["prompt"] == self.prompts[i]  # the same prompt in both workers
        return Reference(d["token_ids"], d["text"], d["finish_reason"])

    def _claim(self, i: int) -> bool:
        try:
            os.close(os.open(self.root / f"{i}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def __iter__(self):
        pending = list(self.indices)
        since = time.monotonic()
        while pending:
            for i in list(pending):
                ref = self._ready(i)
                if ref is None and self._claim(i):
                    ref = self._decode(i)
                if ref is None and time.monotonic() - since > self.WAIT_S:
                    ref = self._decode(i)
                if ref is not None:
                    assert len(ref.token_ids) == self.NEW_TOKENS or ref.finish_reason == "stop"
                    pending.remove(i)
                    yield self.prompts[i], ref
                    since = time.monotonic()
            if pending:
                time.sleep(0.2)  # the rest are being decoded by the other worker


@pytest.fixture(scope="session")
def default_references(default_model, eval_chat_prompts, tmp_path_factory) -> References:
    """(prompt, plain greedy result) for 10 eval prompts, 128 new tokens: what every drafter on
    the default model must reproduce (~1.5 minutes of CPU in all, shared by the xdist workers of
    one run: each prompt is decoded by one of them, see ``References``)."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the run's directory, above each worker's own (never shared across runs)
    root = root / "default-references"
    root.mkdir(exist_ok=True)
    return References(default_model, eval_chat_prompts[:10], root)


def patch_default_loads(mp: pytest.MonkeyPatch, default_model: LoadedModel) -> None:
    """CLI commands get the session's default model (float32, CPU) instead of reading and
    converting the GGUF again (2-4 s a load, several loads a test); any other source, dtype or
    device goes to the real loader as before (its errors included)."""
    from agentspark.commands import generate
    from agentspark.model import loading

    real = loading.load_model

    def load(source="default", *, dtype="float32", device="cpu"):
        if str(source) == "default" and dtype in ("float32", torch.float32) and str(device) == "cpu":
            return default_model
        return real(source, dtype=dtype, device=device)

    mp.setattr(loading, "load_model", load)
    mp.setattr(generate, "load_model", load)  # imported by name at module level there


@pytest.fixture
def reuse_default_model(monkeypatch, default_model) -> LoadedModel:
    """This test's CLI commands load the default model as the session's (``patch_default_loads``)."""
    patch_default_loads(monkeypatch, default_model)
    return default_model


def assert_reproduces(engine, references) -> int:
    """Every reference reproduced token for token and character for character; returns how many
    draft tokens were accepted in all (so a test can show the fast path ran)."""
    from agentspark import SamplingParams

    params = SamplingParams(max_new_tokens=128)
    accepted = 0
    for prompt, ref in references:
        got = engine.generate(prompt, params)
        assert got.token_ids == ref.token_ids
        assert got.text == ref.text
        accepted += sum(r.accepted for r in got.stats.rounds)
    return accepted


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (run through the device tool)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
