"""Shared test seams: tiny random models of each family (ours and transformers' twin), the real
default model, and prompts from the bundled eval sample."""

from __future__ import annotations

import os

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


@pytest.fixture(scope="session")
def default_references(default_model, eval_chat_prompts):
    """(prompt, plain greedy result) for 10 eval prompts, 128 new tokens: what every drafter on
    the default model must reproduce (computed once per test process: ~1.5 minutes of CPU)."""
    from agentspark import Engine, SamplingParams

    plain = Engine(default_model)
    params = SamplingParams(max_new_tokens=128)
    refs = [(p, plain.generate(p, params, speculative=False)) for p in eval_chat_prompts[:10]]
    assert all(r.stats.new_tokens == 128 or r.finish_reason == "stop" for _, r in refs)
    return refs


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
