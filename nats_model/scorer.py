"""The NAtS type scorer (docs/METHOD.md, "Type scorer"): per attention layer, logits of the three types.

Training samples hard one-hot types with the straight-through Gumbel-softmax (tau = 1), the
first and last position (chunk) forced Global; the gradient of the attention's backward reaches
the scorer weights through the soft sample. Inference takes the argmax with a bias on the Global
logit, position 0 forced Global.

Chunk variant at inference: a chunk whose C tokens have not all arrived yet counts as Global
(all its tokens are kept). This is NOT applied inside `infer_types` (the scorer sees only the
pooled input, not whether the sequence will go on); the caller that owns the stream (the cache
engine) knows when a chunk is finished and applies `mark_unfinished_chunk_global` to the types
of the current sequence length before using them.
"""

from __future__ import annotations

import torch
from torch import nn

from nats_model.mask import GLOBAL, chunk_count


def chunk_mean_pool(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Mean over consecutive chunks of `chunk_size` tokens: (B, N, d) -> (B, ceil(N/C), d).

    The last chunk may be shorter; it is averaged over the tokens it has.
    """
    b, n, d = x.shape
    nc = chunk_count(n, chunk_size)
    pad = nc * chunk_size - n
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad))  # (B, Nc*C, d), zeros appended
    sums = xp.reshape(b, nc, chunk_size, d).sum(2)  # (B, Nc, d)
    counts = torch.full((nc, 1), float(chunk_size), dtype=x.dtype, device=x.device)
    counts[-1] = chunk_size - pad
    return sums / counts


class TypeScorer(nn.Module):
    """Linear d_model -> n_kv_heads * 3 (no bias) giving Global/Local/SW logits per KV head.

    The input is the attention block's pre-normed input; it is detached here (the scorer learns
    only from the gradient that reaches the mask). With `chunk_size=C` the input is mean-pooled
    over chunks of C tokens first and one set of logits is returned per chunk.
    """

    def __init__(self, d_model: int, n_kv_heads: int, chunk_size: int | None = None):
        super().__init__()
        if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
            raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
        self.d_model = d_model
        self.n_kv_heads = n_kv_heads
        self.chunk_size = chunk_size
        self.proj = nn.Linear(d_model, n_kv_heads * 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d_model) -> logits (B, Hkv, N, 3), or (B, Hkv, ceil(N/C), 3) for chunks."""
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, N, {self.d_model}), got {tuple(x.shape)}")
        x = x.detach()
        if self.chunk_size is not None:
            x = chunk_mean_pool(x, self.chunk_size)  # (B, Nc, d)
        b, n, _ = x.shape
        logits = self.proj(x).view(b, n, self.n_kv_heads, 3)  # (B, N, Hkv, 3)
        return logits.permute(0, 2, 1, 3)  # (B, Hkv, N, 3)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_kv_heads={self.n_kv_heads}, chunk_size={self.chunk_size}"


def _global_onehot_like(logits: torch.Tensor) -> torch.Tensor:
    g = torch.zeros(3, dtype=logits.dtype, device=logits.device)
    g[GLOBAL] = 1.0
    return g


def sample_train_types(
    logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hard straight-through Gumbel-softmax types: logits (..., N, 3) -> one-hot (..., N, 3).

    Forward value: a hard one-hot per position; gradient: that of the soft Gumbel-softmax sample.
    Positions 0 and N-1 (the first and last chunk for chunk logits) are overwritten with Global;
    they carry no gradient, the other positions keep the straight-through one.
    """
    if logits.shape[-1] != 3 or logits.ndim < 2:
        raise ValueError(f"logits must be (..., N, 3), got {tuple(logits.shape)}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    # Gumbel(0, 1) noise = -log(Exp(1))
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    y_soft = ((logits + gumbels) / tau).softmax(dim=-1)  # (..., N, 3)
    index = y_soft.argmax(dim=-1)
    y_hard = torch.nn.functional.one_hot(index, 3).to(logits.dtype)
    y = y_hard - y_soft.detach() + y_soft  # straight-through
    n = logits.shape[-2]
    forced = torch.zeros(n, 1, dtype=torch.bool, device=logits.device)
    forced[0] = True
    forced[n - 1] = True
    return torch.where(forced, _global_onehot_like(logits), y)


def infer_types(logits: torch.Tensor, global_bias: float = 0.1) -> torch.Tensor:
    """Inference types: argmax after adding `global_bias` to the Global logit; position 0 Global.

    logits (..., N, 3) -> long (..., N). No noise. For chunk logits see
    `mark_unfinished_chunk_global` (applied by the caller).
    """
    if logits.shape[-1] != 3:
        raise ValueError(f"logits must be (..., N, 3), got {tuple(logits.shape)}")
    bias = torch.zeros(3, dtype=logits.dtype, device=logits.device)
    bias[GLOBAL] = global_bias
    types = (logits.detach() + bias).argmax(dim=-1)
    types[..., 0] = GLOBAL
    return types


def chunk_is_finished(n_tokens: int, chunk_index: int, chunk_size: int) -> bool:
    """True when all C tokens of chunk `chunk_index` are among the first `n_tokens` tokens."""
    return (chunk_index + 1) * chunk_size <= n_tokens


def mark_unfinished_chunk_global(types: torch.Tensor, n_tokens: int, chunk_size: int) -> torch.Tensor:
    """Chunk types (..., ceil(n_tokens/C)) with the last chunk set Global if it is incomplete.

    The inference rule "an unfinished chunk counts as Global until it is complete": call it with
    the number of tokens seen so far; once the chunk fills, its scored type takes over. Returns a
    new tensor.
    """
    nc = chunk_count(n_tokens, chunk_size)
    if types.shape[-1] != nc:
        raise ValueError(f"types has {types.shape[-1]} chunks, expected ceil({n_tokens}/{chunk_size}) = {nc}")
    out = types.clone()
    if nc and not chunk_is_finished(n_tokens, nc - 1, chunk_size):
        out[..., nc - 1] = GLOBAL
    return out
