"""NAtS type scorers for Hugging Face causal LMs (Llama, Mistral, Qwen2, Qwen3): inference and training.

`attach_nats_scorers(model, window=..., ...)` gives every decoder layer one
`Linear(hidden, n_kv_heads * 3, bias=False)` (docs/METHOD.md, "Type scorer": rows head-major, i.e. the output
reshapes to (n_kv_heads, 3), types in (Global, Local, Sliding window) order) on the DETACHED normed
attention input, i.e. the `hidden_states` the layer's `self_attn` receives. A forward pre-hook on each
`self_attn` computes the per-token type logits `(B, Hkv, T, 3)` and stores them as
`module.nats_type_logits`, where an attention function reads (and clears) them:

- inference: `nats_model.models.bridge.ATTN_IMPLEMENTATION` (the KV engine; the `nats` policy pools chunk
  logits itself, the scorer being linear without bias);
- training: `TRAIN_ATTN_IMPLEMENTATION`, registered here with `AttentionInterface` (plus a mask entry
  returning None: the NAtS rule is the mask). It samples hard straight-through Gumbel types (positions /
  chunks 0 and N-1 Global) and runs `nats_model.attention.nats_attention` (the block-wise autograd
  Function on the CPU, with the dense reference as its test oracle; the Triton kernels on CUDA) whose
  backward adds the lambda regulariser.

Under any other implementation (the SDPA teacher, plain generation) the hooks do nothing, so one model
object serves as teacher and student by switching `model.set_attn_implementation` per forward.

The scorers live in `HFNatsScorers`, an `nn.Module` that is NOT a submodule of the base model: the
base's `state_dict()` / `save_pretrained` weights are unchanged and no base weight is copied. The
window / chunk size / Global bias are also written to the base config as `nats_window`,
`nats_chunk_size`, `nats_global_bias` (what `NatsPolicy.bind_model` reads); `remove()` takes the hooks
and those attributes off again.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from nats_model import mask as mask_mod
from nats_model import scorer as scorer_mod
from nats_model.models.bridge import ATTN_IMPLEMENTATION
from nats_model.models.families import SUPPORTED_MODEL_TYPES

TRAIN_ATTN_IMPLEMENTATION = "natsbench_nats_train"
CONFIG_ATTRS = ("nats_window", "nats_chunk_size", "nats_global_bias")
_registered = False


def _no_mask(*args, **kwargs):
    return None


def register_train_attention() -> None:
    """Register the training attention function and its (empty) mask entry with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(TRAIN_ATTN_IMPLEMENTATION, _nats_train_attention)
    AttentionMaskInterface.register(TRAIN_ATTN_IMPLEMENTATION, _no_mask)
    _registered = True


def _decoder_layers(model) -> list[nn.Module]:
    """The decoder layers of a Llama-like causal LM (`model.model.layers`)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers: not a Llama-like causal LM")
    return list(layers)


def pool_chunk_logits(logits: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """Per-token logits (B, Hkv, N, 3) -> chunk logits (B, Hkv, ceil(N/C), 3) by the chunk mean.

    The scorer is linear without bias, so the mean of the token logits is the logit of the mean-pooled
    input (docs/METHOD.md, "Chunk-level types"). chunk_size None or 1: unchanged.
    """
    if chunk_size is None or chunk_size == 1:
        return logits
    b, h, n, _ = logits.shape
    pooled = scorer_mod.chunk_mean_pool(logits.reshape(b * h, n, 3), chunk_size)  # (B*Hkv, Nc, 3)
    return pooled.reshape(b, h, -1, 3)


def last_query_kept_fraction(types: torch.Tensor, window: int, chunk_size: int | None, n_tokens: int) -> torch.Tensor:
    """Per (...): fraction of the N keys the last query sees (what the inference cache holds), in O(N).

    types: int (..., N) token types, or (..., ceil(N/C)) chunk types. Equals the last row of
    `mask.visibility` / `mask.chunk_visibility` averaged over keys, without the N x N mask.
    """
    if chunk_size is None or chunk_size == 1:
        tok, ends = types, mask_mod.segment_ends(types)
    else:
        tok = mask_mod.expand_chunk_types(types, chunk_size, n_tokens)
        ends = mask_mod.chunk_token_ends(types, chunk_size, n_tokens)
    last = n_tokens - 1
    pos = torch.arange(n_tokens, device=types.device)
    vis = ((tok == mask_mod.GLOBAL) | ((tok == mask_mod.LOCAL) & (ends >= last))
           | ((tok == mask_mod.SLIDING) & (pos >= last - window)))
    return vis.float().mean(-1)


class HFNatsScorers(nn.Module):
    """The NAtS type scorers of one Hugging Face causal LM, kept outside the base model.

    `proj[str(i)]` is layer i's `Linear(hidden, n_kv_heads * 3, bias=False)`; forward pre-hooks on the
    base's `self_attn` modules feed it (see the module docstring). `window`, `chunk_size`, `global_bias`
    are the attention settings, `lam` the sparsity regulariser used in training; `kept_fraction()`
    reports the mean kept fraction (inference types) of the last training-attention forward.
    `layer_weights()` / `remove()` serve the adapter format and detaching.
    """

    def __init__(self, model, *, window: int, chunk_size: int | None, global_bias: float, lam: float = 0.0):
        super().__init__()
        cfg = model.config
        self.model_type = cfg.model_type
        self.hidden_size = int(cfg.hidden_size)
        self.num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        self.window = int(window)
        self.chunk_size = None if chunk_size in (None, 1) else int(chunk_size)
        self.global_bias = float(global_bias)
        self.lam = float(lam)
        n_layers = len(_decoder_layers(model))
        self.proj = nn.ModuleDict({str(i): nn.Linear(self.hidden_size, self.num_kv_heads * 3, bias=False)
                                   for i in range(n_layers)})
        self._model_ref = weakref.ref(model)  # a weakref: never a submodule, never a copy
        self._handles: list = []
        self._attn_modules: list[nn.Module] = []
        self._kept: dict[int, torch.Tensor] = {}
        self._saved_config: dict[str, object] = {}

    @property
    def num_layers(self) -> int:
        return len(self.proj)

    def layer_weights(self) -> dict[int, torch.Tensor]:
        """{layer index: weight (n_kv_heads * 3, hidden)} (detached; the adapter format's tensors)."""
        return {int(i): p.weight.detach() for i, p in self.proj.items()}

    def load_layer_weights(self, weights: dict[int, torch.Tensor]) -> None:
        """Copy `weights` ({layer: (n_kv_heads * 3, hidden)}) in; ValueError naming the first mismatch."""
        expected = (self.num_kv_heads * 3, self.hidden_size)
        if set(int(k) for k in weights) != set(range(self.num_layers)):
            raise ValueError(f"scorer weights must cover layers 0..{self.num_layers - 1}, got {sorted(weights)}")
        for i, w in sorted(weights.items()):
            if tuple(w.shape) != expected:
                raise ValueError(f"scorer weight of layer {i} must have shape {expected}, got {tuple(w.shape)}")
        with torch.no_grad():
            for i, w in weights.items():
                self.proj[str(int(i))].weight.copy_(w)

    def type_logits(self, layer_idx: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, T, hidden), the self_attn input -> logits (B, Hkv, T, 3), input detached."""
        w = self.proj[str(layer_idx)].weight  # (Hkv*3, hidden), row h*3 + type
        b, t, _ = hidden_states.shape
        logits = F.linear(hidden_states.detach().to(w.dtype), w)  # (B, T, Hkv*3)
        return logits.view(b, t, self.num_kv_heads, 3).permute(0, 2, 1, 3)

    def kept_fraction(self) -> float | None:
        """Mean over layers, rows and KV heads of the last training forward's kept fraction, or None."""
        if not self._kept:
            return None
        return float(torch.stack([v.float().mean() for v in self._kept.values()]).mean())

    def _hook(self, layer_idx: int):
        def pre_hook(module, args, kwargs):
            if module.config._attn_implementation not in (ATTN_IMPLEMENTATION, TRAIN_ATTN_IMPLEMENTATION):
                return None  # teacher / plain forward: no logits, nothing stale left behind
            x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, T, hidden)
            module.nats_type_logits = self.type_logits(layer_idx, x)
            return None

        return pre_hook

    def _attach(self, model) -> None:
        for i, layer in enumerate(_decoder_layers(model)):
            attn = layer.self_attn
            attn._nats_scorers = weakref.ref(self)  # plain attribute (weakref), not a registered module
            attn.nats_type_logits = None
            self._handles.append(attn.register_forward_pre_hook(self._hook(i), with_kwargs=True))
            self._attn_modules.append(attn)
        cfg = model.config
        for name, value in zip(CONFIG_ATTRS, (self.window, self.chunk_size, self.global_bias), strict=True):
            self._saved_config[name] = getattr(cfg, name, None)
            setattr(cfg, name, value)

    def remove(self) -> None:
        """Take the hooks, the per-module attributes and the config's nats_* settings off the base model."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for attn in self._attn_modules:
            for name in ("_nats_scorers", "nats_type_logits"):
                if name in attn.__dict__:
                    delattr(attn, name)
        self._attn_modules.clear()
        model = self._model_ref()
        if model is not None:
            for name, old in self._saved_config.items():
                if old is None:
                    if name in model.config.__dict__:
                        delattr(model.config, name)
                else:
                    setattr(model.config, name, old)
        self._saved_config.clear()

    @contextlib.contextmanager
    def implementation(self, name: str):
        """Run the base model with attention implementation `name` inside the block, then restore."""
        model = self._model_ref()
        previous = model.config._attn_implementation
        if name == TRAIN_ATTN_IMPLEMENTATION:
            register_train_attention()
        model.set_attn_implementation(name)
        try:
            yield model
        finally:
            model.set_attn_implementation(previous)

    def extra_repr(self) -> str:
        return (f"model_type={self.model_type}, layers={self.num_layers}, kv_heads={self.num_kv_heads}, "
                f"hidden={self.hidden_size}, window={self.window}, chunk_size={self.chunk_size}, "
                f"global_bias={self.global_bias}, lam={self.lam}")


def _nats_train_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function for training: query (B, Hq, T, hd), key/value (B, Hkv, T, hd) ->
    (B, T, Hq, hd). Causal NAtS attention with straight-through Gumbel types; `attention_mask` is
    ignored (rows are unpadded or right-padded, which causal attention never sees)."""
    ref = getattr(module, "_nats_scorers", None)
    scorers = ref() if ref is not None else None
    logits = getattr(module, "nats_type_logits", None)
    if scorers is None or logits is None:
        raise RuntimeError(f"attention implementation {TRAIN_ATTN_IMPLEMENTATION!r} needs NAtS scorers "
                           "(nats_model.models.hf_nats.attach_nats_scorers)")
    module.nats_type_logits = None
    n = query.shape[2]
    sliding = kwargs.get("sliding_window")
    if sliding is not None and n > sliding:
        raise ValueError(f"layer {module.layer_idx} uses the base model's sliding window {sliding} < {n} tokens; "
                         "NAtS training supports full-attention layers only (use shorter sequences)")
    chunk = scorers.chunk_size
    logits = pool_chunk_logits(logits.float(), chunk)  # (B, Hkv, N or Nc, 3)
    onehot = scorer_mod.sample_train_types(logits)  # straight-through, first and last Global
    with torch.no_grad():  # the kept fraction the inference cache would reach on this input
        types = scorer_mod.infer_types(logits, global_bias=scorers.global_bias)
        if chunk is not None:
            types = scorer_mod.mark_unfinished_chunk_global(types, n, chunk)
        scorers._kept[module.layer_idx] = last_query_kept_fraction(types, scorers.window, chunk, n)
    from nats_model.attention import nats_attention

    out = nats_attention(query, key, value, onehot, window=scorers.window, lam=scorers.lam, chunk_size=chunk,
                         scale=scaling)  # (B, Hq, N, hd)
    return out.transpose(1, 2).contiguous(), None


def attach_nats_scorers(model, *, window: int, chunk_size: int | None = None, global_bias: float = 0.1,
                        weights: dict[int, torch.Tensor] | None = None, lam: float = 0.0) -> HFNatsScorers:
    """Attach NAtS type scorers to a Hugging Face Llama / Mistral / Qwen2 / Qwen3 causal LM.

    Base weights are neither changed nor copied; the returned `HFNatsScorers` holds the only new
    parameters (on the base's device, float32). `weights` ({layer: (n_kv_heads*3, hidden)}) loads
    trained scorers; without it they start at nn.Linear's random init. ValueError for another
    model_type (listing the supported ones), a model that already has scorers, or bad settings.
    """
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"NAtS scorers: unsupported Hugging Face model_type {mtype!r}; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    if any(getattr(layer.self_attn, "_nats_scorers", None) is not None for layer in _decoder_layers(model)):
        raise ValueError("the model already has NAtS scorers attached (call .remove() on them first)")
    scorers = HFNatsScorers(model, window=window, chunk_size=chunk_size, global_bias=global_bias, lam=lam)
    param = next(model.parameters(), None)
    if param is not None:
        scorers.to(device=param.device)
    if weights is not None:
        scorers.load_layer_weights(weights)
    scorers._attach(model)
    return scorers
