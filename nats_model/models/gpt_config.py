"""The configuration of the small GPT (`nats_model.models.gpt`), stored as `config.json`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTENTION_KINDS = ("full", "nats")
MLP_KINDS = ("gelu", "swiglu")


@dataclass
class GPTConfig:
    """Hyperparameters of the small pre-norm GPT: sizes, RoPE and the attention kind.

    `attention="full"` is causal softmax attention (SDPA); `"nats"` adds one type scorer per layer
    and attends under the NAtS visibility rule with window `window` (tokens), optional chunks of
    `chunk_size` tokens, the inference Global-logit bias `global_bias` and the sparsity
    regulariser strength `lam` (used in training only). Byte-level by default (vocab 256).
    `mlp="gelu"`: down(gelu(up(x))); `"swiglu"`: Llama's gated MLP down(silu(gate(x)) * up(x)), which
    makes the model exactly a Hugging Face Llama (`nats_model.models.gpt_to_llama`). The MLP's hidden
    size is `int(mlp_ratio * d_model)` either way.
    """

    vocab_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4
    d_model: int = 128
    mlp_ratio: float = 4.0
    mlp: str = "gelu"
    rope_theta: float = 5e5
    norm_eps: float = 1e-5
    max_seq_len: int = 4096
    attention: str = "full"
    window: int = 64
    chunk_size: int | None = None
    global_bias: float = 0.1
    lam: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"GPTConfig.attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"GPTConfig.mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig.n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.head_dim % 2:
            raise ValueError(f"GPTConfig head_dim = d_model / n_head must be even for RoPE, got {self.head_dim}")
        if not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"GPTConfig.window must be an integer >= 0, got {self.window!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise ValueError(f"GPTConfig.chunk_size must be None or an integer >= 1, got {self.chunk_size!r}")
        if self.lam < 0:
            raise ValueError(f"GPTConfig.lam must be >= 0, got {self.lam}")
        if self.mlp_ratio <= 0 or self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError("GPTConfig.mlp_ratio, rope_theta and norm_eps must be > 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        """Build from a dict; unknown keys are an error that names them and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "head_dim"})
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})
