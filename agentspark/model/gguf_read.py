"""Read a GGUF's tensors straight into DecoderModel's parameters, a chunk of rows at a time.

No float32 copy of the weights is ever stored: the cache holds only config.json and the tokenizer
(gguf_convert), and every load dequantizes the GGUF's own tensors (``gguf.quants.dequantize``, numpy)
into parameter buffers already in the load dtype. A chunk is at most ~16 MB of float32 rows, so
peak memory is the model plus one chunk (~40 MB), in float32 and bfloat16 alike. Tensor bytes are read with
``readinto`` rather than through a memory map, so the GGUF's pages never count in our resident set.

The names and layout reproduce transformers' GGUF reader (modeling_gguf_pytorch_utils): llama.cpp's
standard tensor names map to HF names, and for the ``llama`` architecture llama.cpp's q/k
permutation is undone (Qwen2/Qwen3 GGUFs are not permuted). tests/test_gguf_read.py checks that our
tensors equal transformers' bit for bit.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch

from ..errors import CorruptModelError, ModelLoadError, UnsupportedModelError
from ..progress import track
from .config import DecoderConfig
from .decoder import DecoderModel
from .weights import empty_model, finish_model, hf_shapes, hf_slots, place, slot_view

# float32 bytes dequantized at once. With gguf's own temporaries (its per-16-row pieces before
# they are concatenated) and the raw bytes, a chunk costs ~2.5x this: the only transient beyond the model.
CHUNK_BYTES = 16 << 20

_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {  # llama.cpp's per-block tensor stem -> HF's module under model.layers.N
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None for tensors the
    decoder has no use for (llama3's ``rope_freqs``: the config's RoPE scaling rebuilds them)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER:
        return f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.{suffix}"
    return None


def import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise ModelLoadError("reading .gguf files needs the `gguf` package: pip install gguf") from exc
    return gguf


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the file: where its bytes are and its shape in HF's order (outermost first)."""

    name: str  # GGUF's name
    qtype: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # of its first byte in the file
    nbytes: int

    @property
    def rows(self) -> int:  # a 1-D tensor (norm, bias) is one row
        return self.shape[0] if len(self.shape) > 1 else 1


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Little-endian reads over the mapped header; struct.error past the end (a truncated file)."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise struct.error("string past the end of the file")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        """A scalar or string; arrays (the tokenizer's vocabulary, merges) are skipped: None."""
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            return self.take(_SCALARS[vtype])
        etype, n = self.take("<I"), self.take("<Q")
        if etype in _SCALARS:  # fixed size: jump over it
            self.pos += n * struct.calcsize(_SCALARS[etype])
            if self.pos > len(self.buf):
                raise struct.error("array past the end of the file")
        else:
            for _ in range(n):
                self.value(etype)
        return None


def read_header(path: Path) -> tuple[dict[str, Any], list[GGUFTensor]]:
    """(scalar and string metadata, every tensor) from the file's header: our own parse, which
    skips the tokenizer arrays (gguf's GGUFReader builds a numpy view per token: ~5 s for
    SmolLM2's 49k) and reads no tensor data."""
    gguf = import_gguf()
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse_header(_Cursor(buf), gguf)
    except (struct.error, ValueError, KeyError, OSError) as exc:  # ValueError: an empty file, a bad type id
        raise CorruptModelError(f"{path} could not be read as GGUF: {exc}") from exc


def _parse_header(c: _Cursor, gguf: Any) -> tuple[dict[str, Any], list[GGUFTensor]]:
    if bytes(c.buf[:4]) != b"GGUF":
        raise ValueError("no GGUF magic")
    c.pos = 4
    version = c.take("<I")
    if version not in (2, 3):
        if int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
            raise UnsupportedModelError("a big-endian GGUF is not supported; convert it on a little-endian machine")
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = c.string()
        metadata[key] = c.value(c.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name, n_dims = c.string(), c.take("<I")
        dims = [c.take("<Q") for _ in range(n_dims)]  # ggml order: innermost first
        infos.append((name, dims, gguf.GGMLQuantizationType(c.take("<I")), c.take("<Q")))
    align = metadata.get("general.alignment") or 32
    data_start = -(-c.pos // align) * align
    tensors = []
    for name, dims, qtype, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        numel = int(np.prod(dims, dtype=np.int64))
        t = GGUFTensor(name, qtype, tuple(reversed(dims)), data_start + offset, numel * type_size // block)
        if t.offset + t.nbytes > len(c.buf):
            raise ValueError(f"the file is truncated: tensor {name} ends past its end")
        tensors.append(t)
    return metadata, tensors


def read_tensor_index(path: Path) -> tuple[str, dict[str, GGUFTensor]]:
    """(general.architecture, {HF name: tensor}) of the tensors the decoder reads."""
    metadata, tensors = read_header(path)
    index = {name: t for t in tensors if (name := hf_name(t.name)) is not None}
    return str(metadata.get("general.architecture", "")), index


def qk_heads(cfg: DecoderConfig, architecture: str) -> dict[str, int]:
    """{HF name: heads} of the tensors llama.cpp permuted (weights and biases of q and k), which
    it does for its ``llama`` architecture only."""
    if architecture != "llama":
        return {}
    out = {}
    for i in range(cfg.num_layers):
        for proj, heads in (("q", cfg.num_heads), ("k", cfg.num_kv_heads)):
            for suffix in ("weight", "bias"):
                out[f"model.layers.{i}.self_attn.{proj}_proj.{suffix}"] = heads
    return out


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation (interleaved RoPE pairs -> HF's rotate-half halves) on
    w [n_head * head_dim, ...] holding whole heads; as transformers' _reverse_permute_weights."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _read_exactly(f: BinaryIO, offset: int, nbytes: int, name: str) -> np.ndarray:
    buf = np.empty(nbytes, dtype=np.uint8)
    view, done = memoryview(buf), 0
    f.seek(offset)
    while done < nbytes:
        n = f.readinto(view[done:])
        if not n:
            raise CorruptModelError(f"the GGUF ended inside tensor {name}")
        done += n
    return buf


def _dequantize(raw: np.ndarray, t: GGUFTensor, rows: int) -> np.ndarray:
    """raw [rows * row_bytes] uint8 -> float32 [rows, *row shape]."""
    gguf = import_gguf()
    try:
        out = gguf.quants.dequantize(raw.reshape(rows, -1), t.qtype)
    except NotImplementedError as exc:
        raise UnsupportedModelError(
            f"tensor {t.name} is stored as {t.qtype.name}, which the installed gguf package cannot dequantize"
        ) from exc
    return out.astype(np.float32, copy=False).reshape(rows, *t.shape[1:]) if len(t.shape) > 1 else out.reshape(t.shape)


def iter_rows(f: BinaryIO, t: GGUFTensor, heads: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows [n, *row shape]) chunks covering ``t`` in HF's layout. With
    ``heads`` (a permuted q/k), chunks hold whole heads: the permutation never crosses one."""
    if len(t.shape) == 1:
        yield 0, _dequantize(_read_exactly(f, t.offset, t.nbytes, t.name), t, 1)
        return
    row_bytes, row_floats = t.nbytes // t.rows, int(np.prod(t.shape[1:]))
    group = t.rows // heads if heads else 1  # rows per head
    per_chunk = max(group, CHUNK_BYTES // (4 * row_floats) // group * group)
    for start in range(0, t.rows, per_chunk):
        n = min(per_chunk, t.rows - start)
        rows = _dequantize(_read_exactly(f, t.offset + start * row_bytes, n * row_bytes, t.name), t, n)
        yield start, (unpermute(rows, n // group) if heads else rows)


_NON_FLOAT = ("I8", "I16", "I32", "I64", "F64")


def checked_tensors(cfg: DecoderConfig, path: Path) -> tuple[dict[str, int], dict[str, GGUFTensor]]:
    """({HF name: heads} of the permuted q/k, {HF name: tensor} for every tensor of ``hf_names(cfg)``),
    each present, of a float type and of the shape ``cfg`` implies; nothing else is read."""
    architecture, tensors = read_tensor_index(path)
    checked = {}
    for hf, shape in hf_shapes(cfg).items():
        t = tensors.get(hf)
        if t is None:
            raise CorruptModelError(f"weight {hf!r} is missing from the checkpoint")
        if t.qtype.name in _NON_FLOAT:
            raise CorruptModelError(f"weight {hf!r} has non-float GGUF type {t.qtype.name}")
        if t.shape != shape:
            raise CorruptModelError(f"weight {hf!r} has shape {t.shape}, expected {shape}")
        checked[hf] = t
    return qk_heads(cfg, architecture), checked


def load_gguf_model(cfg: DecoderConfig, path: Path, *, dtype: torch.dtype, device: torch.device) -> DecoderModel:
    """A DecoderModel holding the GGUF's weights, dequantized into ``dtype`` on ``device``."""
    permuted, tensors = checked_tensors(cfg, path)
    plan = hf_slots(cfg)
    model, params = empty_model(cfg, dtype=dtype, device=device)
    with open(path, "rb", buffering=0) as f:
        for hf, t in track(tensors.items(), "loading the weights", len(tensors)):
            for start, rows in iter_rows(f, t, permuted.get(hf)):
                src = torch.from_numpy(rows)
                for slot in plan[hf]:  # a tied embedding goes to two places
                    place(slot_view(params, slot)[start : start + len(rows)], src, slot.transposed)
    return finish_model(cfg, model, params)


def hf_tensors(cfg: DecoderConfig, path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, float32 tensor [HF shape]) for every weight, one at a time: what transformers'
    GGUF reader returns, and what the HF twin's model.safetensors stores (gguf_convert)."""
    permuted, tensors = checked_tensors(cfg, path)
    with open(path, "rb", buffering=0) as f:
        for hf, t in tensors.items():
            out = np.empty(t.shape, dtype=np.float32)
            for start, rows in iter_rows(f, t, permuted.get(hf)):
                out[start : start + len(rows)] = rows
            yield hf, torch.from_numpy(out)
