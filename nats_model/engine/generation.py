"""The loops that drive a model through the KV engine: chunked prefill, token-by-token decode.

`generate` and `score_run` / `score` run a model (the small GPT or a Hugging Face Llama /
Mistral / Qwen2, through its bridge in `nats_model.models.bridge`) with a fresh
`nats_model.engine.kv_engine.KVEngine` as its `kv_engine`; the protocol helpers
(`check_protocol`, `decode_evicts`, `prefill_steps`) say which steps may evict.

Compression protocols (`compress`, `PROTOCOLS`): when a policy may evict.
- "streaming": on every prefill chunk and every decode step (tokens evicted as they arrive; the
  H2O, TOVA, StreamingLLM and NAtS papers' setting).
- "prompt": the whole prompt is prefilled keeping every token (`Step.evict` False on every chunk
  but the last), compressed once at its end (`Step.compress_point`), then decode evicts only when
  the policy's `decode_evicts` says so (kvpress with `query_aware=True`; SnapKV's paper).
- "context": prefill chunks end exactly at `context_len`, the end of the context; the chunk that
  ends there is the compression point, the earlier ones and the question's chunks after it keep
  every token, so what is kept is decided before the question exists (kvpress' default,
  `query_aware=False`); decode as under "prompt".
A step that may not evict still updates the policy's statistics (`Policy.evicting`).
"""

from __future__ import annotations

import time

import torch

from nats_model.engine.kv_engine import KVEngine
from nats_model.engine.prefill_attention import DEFAULT_OBSERVE_BLOCK
from nats_model.engine.results import CacheStats, GenerationResult, ScoreResult
from nats_model.policies.base import PROTOCOLS, Policy


def _bind(policy: Policy, bridge) -> None:
    """Give a policy that re-rotates keys the model's RoPE theta unless it was set explicitly."""
    if getattr(policy, "rope_theta", 0) is None and bridge.rope_theta is not None:
        policy.rope_theta = bridge.rope_theta
    policy.bind_model(bridge.model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  prefill_chunk_size: int | None) -> torch.Tensor:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, length>0), got shape {tuple(input_ids.shape)}")
    if prefill_chunk_size is not None and (not isinstance(prefill_chunk_size, int) or prefill_chunk_size < 1):
        raise ValueError(f"prefill_chunk_size must be None or an int >= 1, got {prefill_chunk_size!r}")
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    mask = attention_mask.bool()
    if bool((mask[:, 1:].int() < mask[:, :-1].int()).any()):
        raise ValueError("attention_mask: only left padding is supported (zeros before ones in each row)")
    if not bool(mask[:, -1].all()):
        raise ValueError("attention_mask: every sequence needs at least one real token")
    return mask


def check_protocol(policy: Policy, compress: str | None) -> str:
    """`compress`, or the policy's `default_protocol` for None; ValueError unless it is a protocol the
    policy declares (`Policy.protocols`)."""
    if compress is None:
        return str(getattr(policy, "default_protocol", "streaming"))
    allowed = tuple(getattr(policy, "protocols", ("streaming",)))
    if compress not in PROTOCOLS or compress not in allowed:
        raise ValueError(f"compress: policy {policy.name!r} does not support {compress!r}; allowed: "
                         f"{', '.join(allowed)}")
    return compress


def decode_evicts(policy: Policy, compress: str) -> bool:
    """Whether decode steps (and, in `score_run`, the steps after the prompt) may evict: always under
    "streaming", else as the policy declares (`Policy.decode_evicts`)."""
    return compress == "streaming" or bool(getattr(policy, "decode_evicts", True))


def prefill_steps(P: int, chunk: int | None, compress: str,
                  context_len: int | None = None) -> list[tuple[int, int, bool, bool]]:
    """The prefill chunks of a P-column prompt under a protocol: (start, end, evict, compress_point).

    streaming: chunks of `chunk` columns (None: one), each may evict, the last is the compression
    point; prompt: the same chunks, only the last may evict; context: chunks of the first
    `context_len` columns, then of the rest, so a chunk ends exactly at the context's end: that one is
    the only one that may evict (0 < context_len < P)."""
    chunk = P if chunk is None else chunk
    if compress == "context":
        if isinstance(context_len, bool) or not isinstance(context_len, int) or not 0 < context_len < P:
            raise ValueError(f"context_len: compress='context' needs the column where the context ends, an int "
                             f"in [1, {P - 1}] (a question must follow it), got {context_len!r}")
        spans = [(s, min(context_len, s + chunk)) for s in range(0, context_len, chunk)]
        spans += [(s, min(P, s + chunk)) for s in range(context_len, P, chunk)]
        return [(s, e, e == context_len, e == context_len) for s, e in spans]
    if compress not in PROTOCOLS:
        raise ValueError(f"compress: unknown protocol {compress!r}; allowed: {', '.join(PROTOCOLS)}")
    return [(s, min(P, s + chunk), compress == "streaming" or s + chunk >= P, s + chunk >= P)
            for s in range(0, P, chunk)]


def _prefill(bridge, engine: KVEngine, input_ids, mask, chunk: int | None, compress: str = "streaming",
             context_len: int | None = None) -> torch.Tensor:
    """Feed the prompt in chunks (`prefill_steps`); returns the logits of the last position (B, V)."""
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, P) like Hugging Face
    P = input_ids.shape[1]
    logits = None
    for s, e, evict, point in prefill_steps(P, chunk, compress, context_len):
        pos, val = positions[:, s:e], mask[:, s:e]
        rope = engine.policy.rope_positions(pos, engine.kept_per_seq().to(pos.device), val)
        engine.begin_step(pos, val, prefill=True, last_prefill=e == P, evict=evict, compress_point=point)
        logits = bridge.forward(input_ids[:, s:e], rope, engine, logits_to_keep=1)  # (B, 1, V): the last only
    return logits[:, -1]


def _decode_step(bridge, engine: KVEngine, tok: torch.Tensor, pos: torch.Tensor,
                 evict: bool = True) -> torch.Tensor:
    """tok, pos (B,) -> logits (B, V) for the next token."""
    valid = torch.ones(tok.shape[0], 1, dtype=torch.bool, device=tok.device)
    rope = engine.policy.rope_positions(pos[:, None], engine.kept_per_seq().to(pos.device), valid)
    engine.begin_step(pos[:, None], valid, prefill=False, evict=evict, compress_point=False)
    return bridge.forward(tok[:, None], rope, engine)[:, -1]


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None, gen) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, policy: Policy, max_new_tokens: int,
             attention_mask: torch.Tensor | None = None, prefill_chunk_size: int | None = 512,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = None, observe_block: int = DEFAULT_OBSERVE_BLOCK, compress: str | None = None,
             context_len: int | None = None) -> GenerationResult:
    """Generate `max_new_tokens` per sequence with `policy` managing the KV cache.
    Greedy unless `do_sample`; left padding via `attention_mask`; `prefill_chunk_size=None`
    prefills the whole prompt in one step. `observe_block`: queries per block of an observing
    policy's prefill attention statistics (`KVEngine`; memory, not results). `compress`: the
    compression protocol (module docstring), one of the policy's `protocols` (None: its
    `default_protocol`, what the policy did before protocols existed); `context_len`
    (compress="context" only): the number of leading columns of `input_ids` that are the context
    (left padding included, so every row's context ends at that column), the question follows."""
    from nats_model.models.bridge import bridge_for

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    mask = _check_inputs(input_ids, attention_mask, prefill_chunk_size)
    compress = check_protocol(policy, compress)
    steps_evict = decode_evicts(policy, compress)
    prefill_steps(input_ids.shape[1], prefill_chunk_size, compress, context_len)  # bad context_len: before work
    bridge = bridge_for(model)
    device = input_ids.device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    _bind(policy, bridge)
    policy.reset()
    engine = KVEngine(policy, input_ids.shape[0], observe_block=observe_block)
    out = []
    with bridge.session(engine):
        _sync(device)
        t0 = time.perf_counter()
        logits = _prefill(bridge, engine, input_ids, mask, prefill_chunk_size, compress, context_len)
        tok = _pick(logits, do_sample, temperature, top_k, gen)
        out.append(tok)
        _sync(device)
        t1 = time.perf_counter()
        pos = mask.long().sum(1)  # original position of the first new token
        for _ in range(max_new_tokens - 1):
            logits = _decode_step(bridge, engine, tok, pos, steps_evict)
            tok = _pick(logits, do_sample, temperature, top_k, gen)
            out.append(tok)
            pos = pos + 1
        _sync(device)
        t2 = time.perf_counter()
    return GenerationResult(
        tokens=torch.stack(out, 1), ttft_s=t1 - t0,
        tpot_s=(t2 - t1) / (max_new_tokens - 1) if max_new_tokens > 1 else 0.0,
        tokens_per_s=input_ids.shape[0] * max_new_tokens / max(t2 - t0, 1e-12), **CacheStats.of(engine))


@torch.no_grad()
def score_run(model, input_ids: torch.Tensor, policy: Policy, attention_mask: torch.Tensor | None = None,
              prefill_chunk_size: int = 1, prompt_len: int = 0, prompt_chunk_size: int = 512,
              observe_block: int = DEFAULT_OBSERVE_BLOCK, compress: str | None = None) -> ScoreResult:
    """Streaming NLL with the policy active, plus the cache's KV statistics at the end.

    The first `prompt_len` tokens are a prompt: fed in chunks of `prompt_chunk_size`, the last one
    flagged as the end of prefill (so prompt-compressing policies such as SnapKV compress there, as
    in generation); the remaining tokens are fed `prefill_chunk_size` per step (1 = token by
    token, as StreamingLLM evaluates). `prompt_len=0` streams everything. Every fed token's next-
    token NLL is scored, prompt included. `observe_block` as in `generate`. `compress` (None: the
    policy's default): "streaming"
    (every step may evict) or "prompt" (the prompt's chunks keep every token but the last one, the
    compression point; the later steps evict as `decode_evicts` says); "context" is refused (a scored
    text has no question to append)."""
    from nats_model.models.bridge import bridge_for

    mask = _check_inputs(input_ids, attention_mask, prefill_chunk_size)
    if isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or prompt_len < 0:
        raise ValueError(f"prompt_len must be an int >= 0, got {prompt_len!r}")
    if isinstance(prompt_chunk_size, bool) or not isinstance(prompt_chunk_size, int) or prompt_chunk_size < 1:
        raise ValueError(f"prompt_chunk_size must be an int >= 1, got {prompt_chunk_size!r}")
    compress = check_protocol(policy, compress)
    if compress == "context":
        raise ValueError("compress: score_run has no question to append after a context; allowed: streaming, "
                         "prompt")
    after_prompt_evicts = decode_evicts(policy, compress)
    bridge = bridge_for(model)
    _bind(policy, bridge)
    policy.reset()
    engine = KVEngine(policy, input_ids.shape[0], observe_block=observe_block)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    T = input_ids.shape[1]
    n_prompt = min(prompt_len, T - 1)
    spans = [(s, min(n_prompt, s + prompt_chunk_size), True) for s in range(0, n_prompt, prompt_chunk_size)]
    spans += [(s, min(T - 1, s + prefill_chunk_size), False) for s in range(n_prompt, T - 1, prefill_chunk_size)]
    nll = []
    with bridge.session(engine):
        for s, e, in_prompt in spans:
            pos, val = positions[:, s:e], mask[:, s:e]
            rope = policy.rope_positions(pos, engine.kept_per_seq().to(pos.device), val)
            point = in_prompt and e == n_prompt
            evict = (compress == "streaming" or point) if in_prompt else after_prompt_evicts
            engine.begin_step(pos, val, prefill=True, last_prefill=point, evict=evict, compress_point=point)
            logp = torch.log_softmax(bridge.forward(input_ids[:, s:e], rope, engine).float(), -1)
            tgt = input_ids[:, s + 1:e + 1]
            step_nll = -logp.gather(-1, tgt[..., None])[..., 0]
            nll.append(step_nll.masked_fill(~val, float("nan")))
    return ScoreResult(nll=torch.cat(nll, 1), **CacheStats.of(engine))


def score(model, input_ids: torch.Tensor, policy: Policy, attention_mask: torch.Tensor | None = None,
          prefill_chunk_size: int = 1, prompt_len: int = 0) -> torch.Tensor:
    """Streaming NLL (B, T-1) only: `score_run(...).nll` (see there)."""
    return score_run(model, input_ids, policy, attention_mask, prefill_chunk_size, prompt_len).nll
