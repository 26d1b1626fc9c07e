"""Write a Hugging Face Llama/Qwen2/Qwen3 state dict as a GGUF, the way llama.cpp's converter does.

The inverse of ``gguf_read``, for its tests and for examples/gguf_load_cost.py: we cannot download
GGUFs here, so tiny and ~0.5B/1.5B random models are written with the ``gguf`` package's writer
and quantizers. The tensor names, llama's q/k permutation and the metadata keys are llama.cpp's;
the tokenizer is a synthetic byte-level BPE vocabulary (one token per id, no merges), enough for
transformers to build a tokenizer from the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

_LAYER = {  # HF's per-layer module -> llama.cpp's tensor stem
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf_name: str) -> str:
    module, _, suffix = hf_name.rpartition(".")
    if module in _GLOBAL:
        return f"{_GLOBAL[module]}.{suffix}"
    _, _, layer, rest = module.split(".", 3)  # model.layers.N.<rest>
    return f"blk.{layer}.{_LAYER[rest]}.{suffix}"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: HF's rotate-half pairs -> interleaved pairs, per head.
    w [n_head * head_dim, ...] (n_head: heads of this tensor, the kv heads for k)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(name: str, w: np.ndarray, qtype) -> tuple[np.ndarray, object]:
    """(data, ggml type): 1-D tensors (norms, biases) stay F32 as llama.cpp keeps them."""
    import gguf

    if w.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return w.astype(np.float32), gguf.GGMLQuantizationType.F32
    return gguf.quants.quantize(w, qtype), qtype


def _add_metadata(writer, hf: Mapping, family: str) -> None:
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    writer.add_block_count(hf["num_hidden_layers"])
    writer.add_context_length(hf.get("max_position_embeddings", 4096))
    writer.add_embedding_length(hf["hidden_size"])
    writer.add_feed_forward_length(hf["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(hf.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 1e4)))
    writer.add_layer_norm_rms_eps(float(hf.get("rms_norm_eps", 1e-6)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if family == "llama":
        writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(hf["vocab_size"])


def _add_tokenizer(writer, vocab_size: int) -> None:
    """A byte-level BPE vocabulary of ``vocab_size`` (>= 4) distinct tokens; id 0 is end-of-text."""
    import gguf

    tokens = ["<|endoftext|>", "a", "b", "ab"] + [f"t{i}" for i in range(4, vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (vocab_size - 1))
    writer.add_token_merges(["a b"])  # transformers' BPE wants merges of tokens it knows
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)


def write_gguf(path: Path, hf_config: Mapping, state_dict: Mapping[str, torch.Tensor], qtype=None) -> Path:
    """Write ``state_dict`` (HF names) as a GGUF at ``path``; 2-D weights in ``qtype`` (default Q8_0)."""
    import gguf

    qtype = gguf.GGMLQuantizationType.Q8_0 if qtype is None else qtype
    family = hf_config["model_type"]
    heads, kv_heads = hf_config["num_attention_heads"], hf_config.get("num_key_value_heads") or hf_config["num_attention_heads"]
    writer = gguf.GGUFWriter(str(path), family)
    writer.add_name(f"random {family}")
    _add_metadata(writer, hf_config, family)
    _add_tokenizer(writer, hf_config["vocab_size"])
    for name, t in state_dict.items():
        if name == "lm_head.weight" and hf_config.get("tie_word_embeddings"):
            continue  # a tied head is the embedding: llama.cpp writes no output.weight
        if not torch.is_floating_point(t):  # kept as it is (gguf infers I8..I64): for the readers' tests
            writer.add_tensor(gguf_name(name), t.numpy())
            continue
        w = t.detach().float().numpy()
        if family == "llama" and ".q_proj." in name:
            w = permute_qk(w, heads)
        elif family == "llama" and ".k_proj." in name:
            w = permute_qk(w, kv_heads)
        data, ggml_type = _encode(name, w, qtype)
        writer.add_tensor(gguf_name(name), data, raw_dtype=ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
