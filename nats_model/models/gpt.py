"""A small pre-norm GPT (RMSNorm, RoPE, GQA) whose attention is full causal or NAtS.

Byte-level by default. `forward(idx, targets=None, *, kv_engine=None, positions=None)` returns
`(logits (B, T, V), loss or None)`. With `kv_engine` (generation through a KV cache) every
attention layer computes q, k, v with RoPE at `positions (B, T)` and hands them to
`kv_engine.attend(layer_idx, q, k, v, positions=positions, type_logits=...)`, which returns the
attention output (B, Hq, T, hd). Checkpoints are `model.safetensors` + `config.json` in a folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nats_model.models.gpt_config import GPTConfig
from nats_model.rope import apply_rope, rope_cos_sin, rope_matrix

__all__ = ["GPT", "GPTConfig"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class Attention(nn.Module):
    """Multi-head attention with GQA and RoPE; full causal (SDPA) or NAtS with a type scorer.

    In NAtS mode the scorer reads the (pre-normed) block input detached. Training samples hard
    straight-through Gumbel types and calls `nats_model.attention.nats_attention` (the paper's
    gradient and regulariser); evaluation uses argmax types (+`global_bias` on Global) and the
    dense visibility mask, which equals what the NAtS inference cache keeps.
    """

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        d, hd = config.d_model, config.head_dim
        self.q_proj = nn.Linear(d, config.n_head * hd, bias=False)
        self.k_proj = nn.Linear(d, config.n_kv_head * hd, bias=False)
        self.v_proj = nn.Linear(d, config.n_kv_head * hd, bias=False)
        self.o_proj = nn.Linear(config.n_head * hd, d, bias=False)
        self.scorer: nn.Module | None = None
        if config.attention == "nats":
            from nats_model.scorer import TypeScorer

            self.scorer = TypeScorer(d, config.n_kv_head, chunk_size=config.chunk_size)
        # inference types (B, Hkv, N or Nc) of the last NAtS forward, for kept-fraction statistics
        self.last_types: torch.Tensor | None = None
        self.last_n_tokens = 0

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                kv_engine=None) -> torch.Tensor:
        cfg = self.config
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)  # (B, Hq, T, hd)
        k = self.k_proj(x).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_engine is not None:
            type_logits = None
            if self.scorer is not None:  # per-token logits (B, Hkv, T, 3); the scorer is linear without bias,
                # so a cache policy gets chunk logits by averaging them over each (absolute) chunk
                type_logits = self.scorer.proj(x.detach()).view(B, T, cfg.n_kv_head, 3).permute(0, 2, 1, 3)
            y = kv_engine.attend(self.layer_idx, q, k, v, positions=positions, type_logits=type_logits)
        elif self.scorer is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=cfg.n_kv_head != cfg.n_head)
        else:
            y = self._nats(x, q, k, v)
        y = y.transpose(1, 2).reshape(B, T, cfg.n_head * cfg.head_dim)  # (B, T, Hq*hd)
        return self.o_proj(y)

    def decode(self, x: torch.Tensor, rot: torch.Tensor, positions: torch.Tensor, kv_engine) -> torch.Tensor:
        """`forward` with a KV engine for one token per sequence, lean: x (B, d) 2-D, RoPE as one
        batched matmul with `rot (B, hd, hd)` (`rope_matrix`), functional projections. -> (B, d)."""
        cfg = self.config
        B, hd = x.shape[0], cfg.head_dim
        q = torch.bmm(F.linear(x, self.q_proj.weight).view(B, cfg.n_head, hd), rot)  # (B, Hq, hd)
        k = torch.bmm(F.linear(x, self.k_proj.weight).view(B, cfg.n_kv_head, hd), rot)
        v = F.linear(x, self.v_proj.weight)
        type_logits = None
        if self.scorer is not None:
            type_logits = F.linear(x, self.scorer.proj.weight).view(B, cfg.n_kv_head, 1, 3)
        y = kv_engine.attend(self.layer_idx, q.view(B, cfg.n_head, 1, hd), k.view(B, cfg.n_kv_head, 1, hd),
                             v.view(B, cfg.n_kv_head, 1, hd), positions=positions, type_logits=type_logits)
        return F.linear(y.view(B, cfg.n_head * hd), self.o_proj.weight)

    def _nats(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from nats_model import scorer as scorer_mod

        cfg = self.config
        logits = self.scorer(x.detach())  # (B, Hkv, N or Nc, 3)
        with torch.no_grad():
            types = scorer_mod.infer_types(logits, global_bias=cfg.global_bias)  # (B, Hkv, N or Nc)
            if cfg.chunk_size is not None:
                types = scorer_mod.mark_unfinished_chunk_global(types, q.shape[2], cfg.chunk_size)
        self.last_types, self.last_n_tokens = types, q.shape[2]
        if self.training:
            from nats_model.attention import nats_attention

            onehot = scorer_mod.sample_train_types(logits)  # (B, Hkv, N or Nc, 3), straight-through
            return nats_attention(q, k, v, onehot, window=cfg.window, lam=cfg.lam, chunk_size=cfg.chunk_size)
        vis = dense_visibility(types, cfg.window, cfg.chunk_size, q.shape[2])  # (B, Hkv, N, N)
        group = cfg.n_head // cfg.n_kv_head
        vis = vis.repeat_interleave(group, dim=1)  # (B, Hq, N, N)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=vis, enable_gqa=group > 1)


def dense_visibility(types: torch.Tensor, window: int, chunk_size: int | None, n_tokens: int) -> torch.Tensor:
    """Bool (..., N, N) query x key mask of token (or chunk) types under the NAtS rule."""
    from nats_model import mask

    if chunk_size is None:
        return mask.visibility(types, window)
    return mask.chunk_visibility(types, window, chunk_size, n_tokens)


def kept_fraction_of(types: torch.Tensor, window: int, chunk_size: int | None, n_tokens: int) -> torch.Tensor:
    """Per (B, Hkv): fraction of the N keys the cache holds after the last token (visible to it)."""
    vis = dense_visibility(types, window, chunk_size, n_tokens)  # (B, Hkv, N, N)
    return vis[..., -1, :].float().mean(-1)  # (B, Hkv)


class MLP(nn.Module):
    """Feed-forward block: two-layer GELU (`config.mlp == "gelu"`), or Llama's gated SiLU MLP
    down(silu(gate(x)) * up(x)) (`"swiglu"`)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = int(config.mlp_ratio * config.d_model)
        self.gated = config.mlp == "swiglu"
        if self.gated:
            self.gate = nn.Linear(config.d_model, hidden, bias=False)
        self.up = nn.Linear(config.d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x)))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """`forward` without module-call overhead (one decode step, h (B, d))."""
        if self.gated:
            return F.linear(F.silu(F.linear(h, self.gate.weight)) * F.linear(h, self.up.weight), self.down.weight)
        return F.linear(F.gelu(F.linear(h, self.up.weight)), self.down.weight)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, positions, kv_engine=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, positions, kv_engine)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """The small GPT of natsbench: token embedding, `n_layer` pre-norm blocks, final RMSNorm, LM head.

    Exposes what a KV-cache engine needs: `config` (n_layer, n_head, n_kv_head, head_dim,
    rope_theta), `blocks[i].attn.scorer` (a `TypeScorer` in NAtS mode, else None) and the
    `kv_engine` hook of `forward`.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of the residual projections
            if name.endswith("o_proj.weight") or name.endswith("mlp.down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * config.n_layer) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, kv_engine=None,
                positions: torch.Tensor | None = None,
                logits_to_keep: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) int64 -> (logits (B, T, V), mean cross-entropy over targets != -1, or None).
        `logits_to_keep` k > 0: logits of the last k positions only, (B, k, V) (a prefill chunk needs
        its last position's alone); not with `targets`."""
        if logits_to_keep and targets is not None:
            raise ValueError("logits_to_keep needs targets=None (the loss uses every position's logits)")
        B, T = idx.shape
        if positions is None:
            positions = torch.arange(T, device=idx.device).expand(B, T)  # (B, T)
        elif positions.shape != (B, T):
            raise ValueError(f"positions must have shape (B, T) = {(B, T)}, got {tuple(positions.shape)}")
        if kv_engine is not None and T == 1 and targets is None and not torch.is_grad_enabled():
            return self._decode(idx, positions, kv_engine), None
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)  # (B, T, hd)
        cos, sin = cos.unsqueeze(1).to(self.embed.weight.dtype), sin.unsqueeze(1).to(self.embed.weight.dtype)
        x = self.embed(idx)  # (B, T, d)
        for block in self.blocks:
            x = block(x, cos, sin, positions, kv_engine)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # (B, k, d)
        logits = self.lm_head(self.norm(x))  # (B, T or k, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _decode(self, idx: torch.Tensor, positions: torch.Tensor, kv_engine) -> torch.Tensor:
        """One decode step (T = 1) through the KV engine without module-call overhead: the blocks'
        maths on 2-D (B, d) activations, RoPE as a (hd x hd) rotation matmul. -> logits (B, 1, V)."""
        cfg, dtype = self.config, self.embed.weight.dtype
        cos, sin = rope_cos_sin(positions[:, 0], cfg.head_dim, cfg.rope_theta)  # (B, hd)
        rot = rope_matrix(cos.to(dtype), sin.to(dtype))  # (B, hd, hd)
        x = F.embedding(idx[:, 0], self.embed.weight)  # (B, d)
        shape, eps = (cfg.d_model,), cfg.norm_eps
        for block in self.blocks:
            x = x + block.attn.decode(F.rms_norm(x, shape, block.attn_norm.weight, eps), rot, positions, kv_engine)
            h = F.rms_norm(x, shape, block.mlp_norm.weight, eps)
            x = x + block.mlp.decode(h)
        return F.linear(F.rms_norm(x, shape, self.norm.weight, eps), self.lm_head.weight).unsqueeze(1)

    @torch.no_grad()
    def cpu_decode_layout(self) -> GPT:
        """Store the Linear weights with more outputs than inputs (the MLP's up projection, a vocabulary
        head wider than the model) column-major (an (in, out) contiguous tensor seen as (out, in)) when
        the model is on the CPU; a no-op elsewhere and when done already. Returns self.

        Why: a one-token decode step is a chain of matrix-vector products that read every weight once,
        and at a small kept budget the weights, not the KV cache, dominate it. On the CPU, `F.linear`
        of one row reads a weight fastest along its longer side: measured here (fp32, one thread, 16
        distinct weights so none stays in cache) 2048 x 512 row-major 422-464 us, column-major 221 us;
        512 x 2048 row-major 255-292 us, column-major 486 us; square ones within noise. Same values and shapes;
        prefill GEMMs take the same time; results can differ from the row-major layout in the last
        bits (another summation order), so it is applied once, at load (`services.models.load_model`
        and the decode benchmark), never between two runs of one model. `save_pretrained` writes
        contiguous tensors either way."""
        for module in self.modules():
            w = getattr(module, "weight", None)
            if isinstance(module, nn.Linear) and w.device.type == "cpu" and w.dim() == 2 and w.is_contiguous() \
                    and w.shape[0] > w.shape[1] > 1:
                w.data = w.data.t().contiguous().t()
        return self

    def kept_fraction(self) -> float | None:
        """Mean over layers, batch and KV heads of the kept KV fraction of the last NAtS forward
        (inference types; keys visible to the last query / N), or None without NAtS."""
        fracs = []
        for block in self.blocks:
            types = block.attn.last_types
            if types is None:
                continue
            n_tokens = block.attn.last_n_tokens
            fracs.append(kept_fraction_of(types, self.config.window, self.config.chunk_size, n_tokens).mean())
        return float(torch.stack(fracs).mean()) if fracs else None

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write `config.json` and `model.safetensors` (optionally cast to `dtype`) into folder `path`."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous().cpu()
                 for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "model_type": "natsbench-gpt"})
        (out / CONFIG_FILE).write_text(json.dumps({"model_type": "natsbench-gpt", **self.config.to_dict()}, indent=2)
                                       + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = torch.float32) -> GPT:
        """Load a folder written by `save_pretrained` (safetensors only: never unpickles)."""
        from safetensors.torch import load_file

        folder = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a GPT checkpoint folder: missing {name}")
        config = GPTConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        model = cls(config)
        state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
        model = model.to(device)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()
