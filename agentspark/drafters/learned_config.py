"""LearnedDrafterConfig: the shape of a learned drafter (DSpark, DFlash, EAGLE-3), read from and
written to a DeepSpec-style ``config.json``.

DeepSpec saves a drafter's config as a copy of the target's Qwen3 config with the drafter's fields
on top (deepspec-format.md §2): ``architectures`` is ``Qwen3DSparkModel`` for both DSpark and
DFlash (told apart by ``markov_rank`` and ``enable_confidence_head``) or ``Qwen3Eagle3Model``.
Our own checkpoints use the same file with a few extra fields (``agentspark_*``): a reduced draft
vocabulary, the calibrated confidence temperatures, how the weights are stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import UnsupportedModelError
from ..model.config import DecoderConfig

DSPARK_ARCHITECTURES = ("Qwen3DSparkModel",)
EAGLE3_ARCHITECTURES = ("Qwen3Eagle3Model", "Eagle3DraftModel")
METHODS = ("dspark", "dflash", "eagle3")
MARKOV_HEADS = ("vanilla", "rnn")


@dataclass(frozen=True)
class LearnedDrafterConfig:
    method: str  # "dspark" | "dflash" | "eagle3"
    vocab_size: int  # the target's
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int  # draft layers
    target_layer_ids: tuple[int, ...]  # raw outputs of these target layers are the context features
    num_target_layers: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    block_size: int = 7  # DSpark/DFlash: drafts per block; EAGLE-3: TTT steps
    mask_token_id: int = 0
    markov_rank: int = 0  # 0 = no Markov head (DFlash)
    markov_head_type: str = "vanilla"
    enable_confidence_head: bool = False
    confidence_head_with_markov: bool = True
    draft_vocab: tuple[int, ...] | None = None  # target ids the drafter can propose; None = all
    confidence_temperatures: tuple[float, ...] | None = None  # per position, from calibration
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # other target fields, kept on save

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UnsupportedModelError(f"drafter method {self.method!r} is not supported; supported: {', '.join(METHODS)}")
        if self.markov_rank and self.markov_head_type not in MARKOV_HEADS:
            raise UnsupportedModelError(
                f"markov_head_type {self.markov_head_type!r} is not supported; supported: {', '.join(MARKOV_HEADS)}"
            )
        if not self.target_layer_ids:
            raise UnsupportedModelError("a learned drafter needs at least one target layer id (target_layer_ids)")
        last = self.num_target_layers - 1
        bad = [i for i in self.target_layer_ids if not -1 <= i < last]
        if bad:
            raise UnsupportedModelError(
                f"target_layer_ids {bad} are out of range: use -1 (embeddings) .. {last - 1}; the target's last "
                f"layer ({last}) is excluded because its output is normed in HF's hidden-state convention"
            )
        if self.block_size < 1 or self.num_layers < 1:
            raise UnsupportedModelError("block_size and num_hidden_layers must be >= 1")

    # ---- derived ------------------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        return len(self.target_layer_ids)

    @property
    def draft_vocab_size(self) -> int:
        return self.vocab_size if self.draft_vocab is None else len(self.draft_vocab)

    def rope_config(self) -> DecoderConfig:
        """A DecoderConfig carrying what the rotary tables need (the target's RoPE settings)."""
        return DecoderConfig(
            family="qwen3", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_layers=self.num_layers, num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta, rope_scaling=self.rope_scaling,
            max_position_embeddings=self.max_position_embeddings, qk_norm=True,
        )

    def with_(self, **changes: Any) -> LearnedDrafterConfig:
        return replace(self, **changes)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def for_target(
        cls,
        target: DecoderConfig,
        method: str,
        *,
        num_layers: int = 1,
        target_layer_ids: tuple[int, ...] | None = None,
        block_size: int = 7,
        mask_token_id: int = 0,
        markov_rank: int = 32,
        draft_vocab: tuple[int, ...] | None = None,
    ) -> LearnedDrafterConfig:
        """A fresh drafter for ``target`` (training): shapes inherited, DSpark heads by method."""
        if target_layer_ids is None:
            target_layer_ids = default_layer_ids(target.num_layers)
        dspark = method == "dspark"
        return cls(
            method=method, vocab_size=target.vocab_size, hidden_size=target.hidden_size,
            intermediate_size=target.intermediate_size, num_heads=target.num_heads,
            num_kv_heads=target.num_kv_heads, head_dim=target.head_dim, num_layers=num_layers,
            target_layer_ids=tuple(target_layer_ids), num_target_layers=target.num_layers,
            rms_norm_eps=target.rms_norm_eps, rope_theta=target.rope_theta, rope_scaling=target.rope_scaling,
            max_position_embeddings=target.max_position_embeddings, block_size=block_size,
            mask_token_id=mask_token_id, markov_rank=markov_rank if dspark else 0,
            enable_confidence_head=dspark, draft_vocab=draft_vocab,
        )

    @classmethod
    def from_json(cls, hf: dict[str, Any]) -> LearnedDrafterConfig:
        """From a DeepSpec (or our) ``config.json``; dispatches on ``architectures``."""
        arch = (hf.get("architectures") or [None])[0]
        if arch in DSPARK_ARCHITECTURES:
            rank = int(hf.get("markov_rank", 0) or 0)
            method = "dspark" if rank > 0 or hf.get("enable_confidence_head") else "dflash"
        elif arch in EAGLE3_ARCHITECTURES:
            method = "eagle3"
        else:
            raise UnsupportedModelError(
                f"drafter architecture {arch!r} is not supported; supported: "
                f"{', '.join(DSPARK_ARCHITECTURES + EAGLE3_ARCHITECTURES)} (DeepSpec format)"
            )
        try:
            target = DecoderConfig.from_hf({**hf, "model_type": hf.get("model_type", "qwen3")})
            known = {f for f in cls.__dataclass_fields__}
            temps = hf.get("agentspark_confidence_temperatures")
            vocab = hf.get("agentspark_draft_vocab")
            return cls(
                method=method, vocab_size=target.vocab_size, hidden_size=target.hidden_size,
                intermediate_size=target.intermediate_size, num_heads=target.num_heads,
                num_kv_heads=target.num_kv_heads, head_dim=target.head_dim,
                num_layers=int(hf.get("draft_num_hidden_layers") or hf["num_hidden_layers"]),
                target_layer_ids=tuple(int(i) for i in hf["target_layer_ids"]),
                num_target_layers=int(hf["num_target_layers"]), rms_norm_eps=target.rms_norm_eps,
                rope_theta=target.rope_theta, rope_scaling=target.rope_scaling,
                max_position_embeddings=target.max_position_embeddings,
                block_size=int(hf.get("ttt_length" if method == "eagle3" else "block_size", 7)),
                mask_token_id=int(hf.get("mask_token_id", 0) or 0),
                markov_rank=int(hf.get("markov_rank", 0) or 0) if method != "eagle3" else 0,
                markov_head_type=str(hf.get("markov_head_type", "vanilla")).lower(),
                enable_confidence_head=bool(hf.get("enable_confidence_head", False)),
                confidence_head_with_markov=bool(hf.get("confidence_head_with_markov", True)),
                draft_vocab=tuple(vocab) if vocab else None,
                confidence_temperatures=tuple(float(t) for t in temps) if temps else None,
                extra={k: v for k, v in hf.items() if k not in known},
            )
        except KeyError as exc:
            raise UnsupportedModelError(f"drafter config.json lacks the field {exc.args[0]!r}") from None

    def to_json(self) -> dict[str, Any]:
        """DeepSpec's config.json fields (a Qwen3 config plus the drafter's), and ours."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            model_type="qwen3", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, num_hidden_layers=self.num_layers,
            num_target_layers=self.num_target_layers, rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
            max_position_embeddings=self.max_position_embeddings, tie_word_embeddings=False,
            attention_bias=False, layer_types=["full_attention"] * self.num_layers,
            target_layer_ids=list(self.target_layer_ids),
        )
        if self.rope_scaling:
            out["rope_scaling"] = dict(self.rope_scaling)
        if self.method == "eagle3":
            out.update(architectures=["Qwen3Eagle3Model"], draft_num_hidden_layers=self.num_layers,
                       ttt_length=self.block_size, step_loss_decay=0.8)
        else:
            out.update(architectures=["Qwen3DSparkModel"], block_size=self.block_size,
                       mask_token_id=self.mask_token_id, num_anchors=out.get("num_anchors", 512),
                       markov_rank=self.markov_rank, enable_confidence_head=self.enable_confidence_head)
            if self.markov_rank:
                out["markov_head_type"] = self.markov_head_type
            if self.enable_confidence_head:
                out["confidence_head_with_markov"] = self.confidence_head_with_markov
        if self.draft_vocab is not None:
            out["agentspark_draft_vocab"] = list(self.draft_vocab)
        if self.confidence_temperatures is not None:
            out["agentspark_confidence_temperatures"] = list(self.confidence_temperatures)
        return out

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["draft_vocab"] = None if self.draft_vocab is None else f"{len(self.draft_vocab)} tokens"
        return d


def default_layer_ids(num_target_layers: int, count: int = 3) -> tuple[int, ...]:
    """``count`` target layers spread from shallow to deep, never the last (its HF slot is normed)."""
    last = num_target_layers - 2  # the deepest allowed
    if num_target_layers < 2:
        raise UnsupportedModelError("a learned drafter needs a target with at least 2 layers")
    if count == 1 or last <= 1:
        return (max(last, 0),)
    ids = sorted({round(1 + i * (last - 1) / (count - 1)) for i in range(count)})
    return tuple(ids)
