"""Model bridges for the KV engine: how the generation loops (`nats_model.engine.generation`) run the
small GPT (`GPTBridge`) and Hugging Face causal LMs (`HFBridge`) with a `KVEngine` as their attention.

Hugging Face Llama / Mistral / Qwen2 / Qwen3 (transformers 5) run through an attention function
registered with `AttentionInterface` under `ATTN_IMPLEMENTATION` (plus a mask entry returning
None: the engine builds its own masks). During a run the model is switched to it with
`model.set_attn_implementation` and called with explicit `position_ids` and `use_cache=False`;
the attention function finds the running `KVEngine` through a context variable and hands it the
RoPE-rotated q, k, v of `module.layer_idx`. Nothing in the model is monkey-patched.

NAtS scorers for HF models: a forward pre-hook on each `self_attn` may compute type logits
`(B, Hkv, T, 3)` from the normed attention input and store them as `module.nats_type_logits`;
the attention function passes them to the engine (and clears them). `attach_nats_scorers`
belongs to the NAtS policy's author; this module only reads that attribute.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from nats_model.models.families import SUPPORTED_MODEL_TYPES
from nats_model.models.hf_decode import lean_decode_problem, lean_llama_forward

ATTN_IMPLEMENTATION = "natsbench_kv"
_ENGINE: contextvars.ContextVar = contextvars.ContextVar("natsbench_kv_engine", default=None)
_registered = False
_MASK_BUILT_BY_ENGINE = torch.ones(1, 1, 1, 1, dtype=torch.bool)  # see HFBridge.forward


def _engine_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function: query (B, Hq, T, hd), key/value (B, Hkv, T, hd) -> (B, T, Hq, hd)."""
    engine = _ENGINE.get()
    if engine is None:
        raise RuntimeError(f"attention implementation {ATTN_IMPLEMENTATION!r} used outside nats_model.engine.generation")
    type_logits = getattr(module, "nats_type_logits", None)
    if type_logits is not None:
        module.nats_type_logits = None
    out = engine.attend(module.layer_idx, query, key, value, type_logits=type_logits, scale=scaling,
                        sliding_window=kwargs.get("sliding_window"))
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    return None


def register_attention() -> None:
    """Register the engine's attention function and mask entry with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _engine_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)
    _registered = True


class HFBridge:
    """Runs a Hugging Face Llama / Mistral / Qwen2 / Qwen3 causal LM through a `KVEngine`."""

    def __init__(self, model):
        mtype = getattr(model.config, "model_type", None)
        if mtype not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported Hugging Face model_type {mtype!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        self.model = model
        rope = getattr(model.config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default")
        # re-rotating cached keys by a position delta is exact only for plain RoPE
        self.rope_theta = rope.get("rope_theta") if rope_type == "default" else None
        self.lean_decode = False  # set per session (hooks may be attached after the bridge is made)

    @contextlib.contextmanager
    def session(self, engine):
        register_attention()
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation(ATTN_IMPLEMENTATION)
        token = _ENGINE.set(engine)
        # one-token steps skip transformers' module machinery where that is known to be exact
        self.lean_decode = lean_decode_problem(self.model) is None
        try:
            yield self
        finally:
            _ENGINE.reset(token)
            self.model.set_attn_implementation(previous)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, engine, logits_to_keep: int = 0) -> torch.Tensor:
        """ids, positions (B, T) -> logits (B, T, V), or (B, k, V) for the last k = `logits_to_keep`
        positions only (0: all). A prefill chunk needs only its last position's logits: with a 128k
        vocabulary every position costs 512 KB in float32, a 512-token chunk 256 MB per sequence."""
        if self.lean_decode and ids.shape[1] == 1:
            return lean_llama_forward(self.model, ids, positions, engine)
        # A 4-D attention_mask is final for transformers' mask construction, which then returns at
        # once: without it, every call (each decode step) scans position_ids for packed sequences,
        # ~8 tensor ops. The engine's attention function ignores the mask and builds its own.
        return self.model(input_ids=ids, position_ids=positions, attention_mask=_MASK_BUILT_BY_ENGINE,
                          use_cache=False, logits_to_keep=logits_to_keep).logits


class GPTBridge:
    """Runs `nats_model.models.gpt.GPT` through a `KVEngine` (its `kv_engine` hook)."""

    def __init__(self, model):
        self.model = model
        self.rope_theta = model.config.rope_theta

    @contextlib.contextmanager
    def session(self, engine):
        yield self

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, engine, logits_to_keep: int = 0) -> torch.Tensor:
        """ids, positions (B, T) -> logits (B, T, V), or of the last `logits_to_keep` positions (0: all)."""
        logits, _ = self.model(ids, kv_engine=engine, positions=positions, logits_to_keep=logits_to_keep)
        return logits


def bridge_for(model) -> HFBridge | GPTBridge:
    """The bridge for `model` (a GPT or a supported Hugging Face causal LM)."""
    from nats_model.models.gpt import GPT

    if isinstance(model, GPT):
        return GPTBridge(model)
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        PreTrainedModel = ()
    if isinstance(model, PreTrainedModel):
        return HFBridge(model)
    raise ValueError(f"model must be nats_model.models.gpt.GPT or a Hugging Face "
                     f"{'/'.join(SUPPORTED_MODEL_TYPES)} causal LM, got {type(model).__name__}")
