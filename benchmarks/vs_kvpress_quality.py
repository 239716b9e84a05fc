"""natsbench next to NVIDIA kvpress on a real model: kept positions per (layer, KV head) and accuracy.

Model: `models/smollm2-135m-instruct` (SmolLM2-135M-Instruct: 30 layers, 9 query / 3 KV heads of dim 64,
fp32 on the CPU), loaded by both sides from that folder. kvpress 0.5.5 pins `transformers<5.3`, so its
side runs in `.venv-kvpress` (`--kvpress-python`; `make .venv-kvpress/.kvpress-installed` makes it) as a
subprocess; our side runs in this interpreter. The prompts are natsbench's: `passkey` and `niah_multikey`
instances (`services.workloads`, `chat=on`, seed `--seed`) at each `--contexts` length, encoded by
`services.evaluation.encode_split` exactly as `natsbench eval --workload passkey --workload-param chat=on
--compress context` does (the chat template's user turn, the assistant prefix, and the number of leading
tokens that are the context). The token ids are written once into the work folder; the kvpress side reads
them, and the two sides' results are joined by the sha256 of each prompt's ids.

Protocols (`--protocols`): "prompt": the whole prompt is prefilled and compressed once at its end, then
greedy decode (kvpress: `with press(model): model(ids, past_key_values=cache)`, then the pipeline's decode
loop; the question is part of what is compressed). "context": the context (ids[:context_len]) is prefilled
and compressed, then the question's ids are fed and decoded (kvpress' `KVPressTextGenerationPipeline`
flow: compress the context, then `generate_answer`). Ours: `nats_model.engine.generation.generate(..., compress=
protocol, context_len=...)`, its kept positions read when the prefill returns (positions < context_len).

Presses and their natsbench policies, at `--keep` (25%) of the compressed length kept, n_kept =
int(L * (1 - compression_ratio)) (kvpress' count; ours `budget_tokens=n_kept`), parameters equal on both
sides (kvpress 0.5.5's defaults where natsbench has the same field):
StreamingLLMPress(n_sink 4) / streaming_llm (positions original); SnapKVPress(window 64, kernel 5: kvpress
pools with avg) / snapkv (window_size 64, kernel_size 5, pooling avg); TOVAPress / tova; ObservedAttention
(eager attention, as kvpress requires) / h2o (recent_ratio 0: ObservedAttention has no recent window);
KnormPress / knorm; ExpectedAttentionPress(n_future_positions 512, n_sink 4, covariance, vnorm, epsilon 0) /
expected_attention; PyramidKVPress(window 64, kernel 5, beta 2: with kvpress' default beta 20 the pyramid
needs n_kept >= 20 * 64 tokens, so at these lengths both sides fall back to SnapKV) / pyramidkv (same);
AdaKVPress(SnapKVPress(window 64, kernel 5), alpha_safeguard 0.2) / adakv (same). `RULES` says for each
whether the two rules are the same and, where not, exactly what differs; for those the overlap of the
kept sets is the comparison (|A & B| / max(|A|, |B|) per (layer, head)).

kvpress side, one prefill per prompt for all presses: the compression runs in each layer's forward hook
after the layer's attention, so the hidden states every layer sees are those of a full-cache prefill
whatever the press; one forward (sdpa, kvpress' default; eager for ObservedAttention, which needs the
attention weights) runs every press's own `BasePress.forward_hook` at every layer, each on its own cache
holding that layer's full keys and values. For the first `--verify` prompts of each protocol every press
also runs alone the usual way (`with press(model): model(...)`) and its compressed cache (and AdaKV's
masked indices) must equal the shared run's bit for bit; the JSON says so (`kvpress_shared_prefill_verified`).
kvpress' kept positions: each kept key matched to the layer's keys before compression; AdaKV masks instead
of dropping (`module.masked_key_indices`, read by its attention patch), so its kept set is the complement
of the masked indices. The first answer token comes from the compressing forward's logits ("prompt") or
the question's forward ("context"; for PyramidKV, whose layers hold different counts, the question is fed
one token at a time: transformers 5.2 builds a multi-token step's attention mask from layer 0's length and
fails on the other layers, in kvpress' own pipeline too); then kvpress' pipeline loop (positions from L,
stop at EOS).

Accuracy: each side's answer decoded by the same tokenizer call and scored by the workload's scorer (exact
match), Wilson 95% intervals (`benchmarks/quality_vs_kv.wilson`); "inside" = each side's accuracy lies in
the other's interval. Targets: equal kept sets for every press whose rule is the same
(`kept_sets_equal_same_rule`), accuracies inside each other's interval (`accuracies_inside_intervals`).

Cost (2-core CPU, 2 torch threads): a 1054-token prompt is ~4 s per natsbench policy and ~10 s for all of
kvpress' presses; 2078 tokens ~2.5x that. `--n` examples per (protocol, workload, context), `--n-at`
overrides per context or protocol@context (0 skips the cell); the default runs prompt@1024 n=8,
prompt@2048 n=3, context@1024 n=4, context@2048 skipped (about 25 minutes); `--n 50 --n-at ''` is the issue's n >= 50.
`--quick` (make bench QUICK=1): passkey@1024, 3 prompts, "prompt" only.

    flock /tmp/natsbench-heavy.lock .venv/bin/python benchmarks/vs_kvpress_quality.py [--quick] [--n 50 --n-at '']

Human table first; the LAST line is one JSON object. Without a usable kvpress or without the real model it
prints one line saying why and a JSON line with `skipped`, and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from vs_kvpress import _dist_version, kvpress_problem, n_kept_for  # noqa: E402 - after the path above

MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
PRESSES = ("streaming_llm", "snapkv", "tova", "h2o", "knorm", "expected_attention", "pyramidkv", "adakv")
PROTOCOLS = ("prompt", "context")
WORKLOADS = ("passkey", "niah_multikey")
N_SINK, WINDOW, KERNEL, BETA, ALPHA, N_FUTURE = 4, 64, 5, 2, 0.2, 512
DEFAULT_N, DEFAULT_N_AT = 8, "2048=3,context@1024=4,context@2048=0"

# natsbench policy parameters equal to the kvpress press's (see the module docstring)
OURS = {
    "streaming_llm": {"n_sink": N_SINK, "positions": "original"},
    "snapkv": {"window_size": WINDOW, "kernel_size": KERNEL, "pooling": "avg"},
    "tova": {},
    "h2o": {"recent_ratio": 0.0},
    "knorm": {},
    "expected_attention": {"n_future_positions": N_FUTURE, "n_sink": N_SINK, "use_covariance": True,
                           "use_vnorm": True, "epsilon": 0.0},
    "pyramidkv": {"window_size": WINDOW, "kernel_size": KERNEL, "pooling": "avg", "beta": float(BETA)},
    "adakv": {"window_size": WINDOW, "kernel_size": KERNEL, "pooling": "avg", "alpha_safeguard": ALPHA},
}
# (same rule?, what differs) from reading kvpress 0.5.5's presses and natsbench's policies
DECODE_NOTE = ("decode: natsbench's {p} keeps evicting during decode (its decode_evicts) under prompt/context, "
               "kvpress never compresses during decode")
RULES = {
    "streaming_llm": (True, "same rule: first n_sink + the most recent; " + DECODE_NOTE.format(p="streaming_llm")),
    "snapkv": (True, "same rule (kvpress averages over window queries and the GQA group, natsbench sums: a "
                     "constant factor; float order and the attention kernel differ, so near-ties may fall apart)"),
    "tova": (True, "same rule (mean over all query heads of the last query's attention); kvpress forces the last "
                   "token kept, natsbench ranks it; " + DECODE_NOTE.format(p="tova")),
    "h2o": (False, "different rule: ObservedAttention divides each key's attention sum by the number of queries "
                   "that see it (L - j), H2O (recent_ratio 0) ranks the plain sum, so H2O favours early keys; "
                   + DECODE_NOTE.format(p="h2o")),
    "knorm": (True, "same rule (-||k||); at layer 0 a token repeated at several positions has keys of one norm "
                    "(RoPE keeps norms): exact ties at the cut, which torch.topk (kvpress) breaks in its own order "
                    "and natsbench by dropping the later position (see the up-to-ties column)"),
    "expected_attention": (True, "same rule (statistics of the compressed prompt's queries, positions >= n_sink; "
                                 "kvpress centres the covariance, natsbench uses E[qq^T] - mu mu^T: float order)"),
    "pyramidkv": (False, "different rounding: kvpress' per-layer budgets are built from the unfloored "
                         "L * (1 - ratio), natsbench's from the integer n_kept, so a layer may keep one token more "
                         "or less; the scores are SnapKV's on both sides"),
    "adakv": (True, "same selection (safeguard top floor(n_kept * alpha) per head, then the lowest across the "
                    "layer's heads); kvpress masks the pruned keys (memory not saved), natsbench drops them"),
}


# ---------------------------------------------------------------- pure helpers
def prompt_key(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool (..., L) -> uint8 (..., ceil(L / 8)) (8 positions a byte, little-endian bits)."""
    L = mask.shape[-1]
    pad = (-L) % 8
    bits = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad)).view(*mask.shape[:-1], -1, 8)
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
    return (bits * weights).sum(-1).to(torch.uint8)


def unpack_mask(packed: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of `pack_mask`: uint8 (..., B) -> bool (..., length)."""
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
    bits = (packed[..., None] & weights) != 0
    return bits.reshape(*packed.shape[:-1], -1)[..., :length]


def mask_agreement(ours: torch.Tensor, kv: torch.Tensor, ties: torch.Tensor | None = None) -> dict:
    """Kept masks (layers, heads, L) of the two sides -> counts: sets, equal sets, sets equal but for
    positions in `ties` (kvpress' exact score ties at its cut, `tied_at_cut`; none when not given), sets of
    equal size, the sum over sets of |A & B| / max(|A|, |B|) (1 for two equal sets) and the kept totals."""
    if ours.shape != kv.shape:
        raise ValueError(f"kept masks of different shapes: ours {tuple(ours.shape)}, kvpress {tuple(kv.shape)}")
    a, b = ours.flatten(0, -2).bool(), kv.flatten(0, -2).bool()
    na, nb = a.sum(-1), b.sum(-1)
    inter = (a & b).sum(-1)
    differ = a ^ b
    if ties is not None:
        differ &= ~ties.flatten(0, -2).bool()
    return {"sets": int(a.shape[0]), "equal": int((a == b).all(-1).sum()),
            "equal_up_to_ties": int(((~differ.any(-1)) & (na == nb)).sum()),
            "same_size": int((na == nb).sum()),
            "overlap_sum": float((inter / torch.maximum(na, nb).clamp(min=1)).sum()),
            "kept_ours": int(na.sum()), "kept_kvpress": int(nb.sum())}


def add_agreement(total: dict | None, part: dict) -> dict:
    return dict(part) if total is None else {k: total[k] + part[k] for k in total}


def strip_eos(tokens: list[int], eos: int | None) -> list[int]:
    return tokens[: tokens.index(eos)] if eos is not None and eos in tokens else list(tokens)


def parse_n_at(text: str, contexts: list[int]) -> dict:
    """"2048=4,context@1024=5" -> {(None, 2048): 4, ("context", 1024): 5}; ValueError naming the entry."""
    out = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        protocol, _, ctx = key.rpartition("@")
        try:
            n, ctx_i = int(value), int(ctx)
        except ValueError:
            raise ValueError(f"--n-at: {item!r} is not CONTEXT=N or PROTOCOL@CONTEXT=N (ints)") from None
        if not sep or n < 0 or (protocol and protocol not in PROTOCOLS):
            raise ValueError(f"--n-at: {item!r}: N must be an int >= 0 and PROTOCOL one of {', '.join(PROTOCOLS)}")
        out[(protocol or None, ctx_i)] = n
    return out


def cell_n(n: int, n_at: dict, protocol: str, ctx: int) -> int:
    return n_at.get((protocol, ctx), n_at.get((None, ctx), n))


def inside(acc_a: float, ci_a: tuple, acc_b: float, ci_b: tuple) -> bool:
    """Each accuracy inside the other's interval."""
    return ci_b[0] <= acc_a <= ci_b[1] and ci_a[0] <= acc_b <= ci_a[1]


# ---------------------------------------------------------------- kvpress side
def kvpress_presses(ratio: float) -> dict:
    from kvpress import (
        AdaKVPress,
        ExpectedAttentionPress,
        KnormPress,
        ObservedAttentionPress,
        PyramidKVPress,
        SnapKVPress,
        StreamingLLMPress,
        TOVAPress,
    )

    return {
        "streaming_llm": StreamingLLMPress(compression_ratio=ratio, n_sink=N_SINK),
        "snapkv": SnapKVPress(compression_ratio=ratio, window_size=WINDOW, kernel_size=KERNEL),
        "tova": TOVAPress(compression_ratio=ratio),
        "h2o": ObservedAttentionPress(compression_ratio=ratio),
        "knorm": KnormPress(compression_ratio=ratio),
        "expected_attention": ExpectedAttentionPress(compression_ratio=ratio, n_future_positions=N_FUTURE,
                                                     n_sink=N_SINK, use_covariance=True, use_vnorm=True,
                                                     epsilon=0.0),
        "pyramidkv": PyramidKVPress(compression_ratio=ratio, window_size=WINDOW, kernel_size=KERNEL, beta=BETA),
        "adakv": AdaKVPress(SnapKVPress(compression_ratio=ratio, window_size=WINDOW, kernel_size=KERNEL),
                            alpha_safeguard=ALPHA),
    }


def tied_at_cut(scores: torch.Tensor, n_kept: int) -> torch.Tensor:
    """bool like scores (..., L): the positions whose score equals the n_kept-th highest when more than
    n_kept reach it (top-k may then keep any of them: its order on exact ties is not part of the rule)."""
    cut = scores.topk(n_kept, dim=-1).values[..., -1:]
    return (scores == cut) & ((scores >= cut).sum(-1, keepdim=True) > n_kept)


def kept_mask_from_cache(kept_keys: torch.Tensor, full_keys: torch.Tensor, masked=None) -> torch.Tensor:
    """bool (Hkv, L): which of the layer's keys before compression (1, Hkv, L, hd) the compressed cache
    (1, Hkv, n, hd) holds, each kept key matched to the very same key; with `masked` (AdaKV's (batch,
    head, seq) indices) the cache holds every key and the masked ones are not kept."""
    H, L = full_keys.shape[1], full_keys.shape[2]
    if masked is not None:
        if kept_keys.shape != full_keys.shape:
            raise RuntimeError("a masking press changed the cache's length")
        mask = torch.ones(H, L, dtype=torch.bool)
        _, heads, seqs = masked
        mask[heads.cpu(), seqs.cpu()] = False
        return mask
    K, F_ = kept_keys[0], full_keys[0]
    where = torch.cdist(K, F_).argmin(-1)  # (Hkv, n)
    if not torch.equal(F_.gather(1, where[..., None].expand_as(K)), K):
        raise RuntimeError("a kept key equals no key of the prompt")
    mask = torch.zeros(H, L, dtype=torch.bool)
    mask.scatter_(1, where, True)
    if not torch.equal(mask.sum(1), torch.full((H,), K.shape[1])):
        raise RuntimeError("two kept keys matched the same prompt key")
    return mask


def shared_prefill(model, ids: torch.Tensor, presses: dict, attn: str):
    """One forward of `ids` that runs every press's own forward hook at every layer, each on its own
    DynamicCache holding the layer's full keys/values. Returns (logits of the last position (V,), the
    uncompressed cache, {name: (its compressed cache, AdaKV's masked indices per layer or None,
    kept mask (layers, Hkv, L), exact ties at the cut (layers, Hkv, L) or None)}). The ties: for a press
    that is ScorerPress' plain top-k (not PyramidKV, not AdaKV), its `score` computed again on the same
    inputs, `tied_at_cut`."""
    from kvpress.presses.scorer_press import ScorerPress
    from kvpress.utils import compute_n_kept, extract_keys_and_values
    from transformers import DynamicCache

    model.set_attn_implementation(attn)
    layers = model.model.layers
    cache = DynamicCache()
    own = {name: (DynamicCache(), [None] * len(layers), [None] * len(layers), [None] * len(layers))
           for name in presses}
    topk = {name for name, p in presses.items() if isinstance(p, ScorerPress) and type(p).compress is ScorerPress.compress}

    def hook(module, args, kwargs, output):
        i = module.layer_idx
        keys, values = extract_keys_and_values(kwargs["past_key_values"], i)
        for name, press in presses.items():
            shadow, masked, kept, ties = own[name]
            shadow.update(keys, values, i)  # this press's cache: the layer's full keys and values
            module.masked_key_indices = None
            press.forward_hook(module, args, {**kwargs, "past_key_values": shadow}, output)
            masked[i] = getattr(module, "masked_key_indices", None)
            kept[i] = kept_mask_from_cache(shadow.layers[i].keys, keys, masked[i])
            if name in topk:
                scores = press.score(module, kwargs["hidden_states"], keys, values, output[1], kwargs)
                ties[i] = tied_at_cut(scores[0], compute_n_kept(keys.shape[2], press.compression_ratio))
        module.masked_key_indices = None
        return output

    for press in presses.values():  # what `press(model)` does before registering its hooks
        press.post_init_from_model(model)
    for layer in layers:
        layer.self_attn.rotary_emb = model.model.rotary_emb
    hooks = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
    finally:
        for h in hooks:
            h.remove()
    return logits, cache, {n: (c, m, torch.stack(k), torch.stack(t) if n in topk else None)
                           for n, (c, m, k, t) in own.items()}


def verify_alone(model, ids: torch.Tensor, name: str, press, attn: str, shared_cache, shared_masked) -> bool:
    """The press run alone the usual way; True when its cache (and masked indices) equal the shared run's."""
    from transformers import DynamicCache

    model.set_attn_implementation(attn)
    cache = DynamicCache()
    with torch.no_grad(), press(model):
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    ok = True
    for i, layer in enumerate(model.model.layers):
        ok &= torch.equal(cache.layers[i].keys, shared_cache.layers[i].keys)
        ok &= torch.equal(cache.layers[i].values, shared_cache.layers[i].values)
        mine, theirs = getattr(layer.self_attn, "masked_key_indices", None), shared_masked[i]
        ok &= (mine is None) == (theirs is None) and (
            mine is None or all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True)))
        layer.self_attn.masked_key_indices = None
    return bool(ok)


def kvpress_answer(model, cache, masked, first_logits, question: torch.Tensor | None, start: int, L: int,
                   max_new: int, eos, attn: str = "sdpa") -> list[int]:
    """kvpress' pipeline decode (`generate_answer`): the question's ids at positions start.. when given (in
    one forward, or one token at a time when the layers hold different counts), then greedy tokens at
    positions L.., stopping at EOS; AdaKV's masks set on the layers meanwhile; the model runs with the
    attention `attn` its prefill used (eager for ObservedAttention, else sdpa)."""
    model.set_attn_implementation(attn)
    layers = model.model.layers
    for i, layer in enumerate(layers):
        layer.self_attn.masked_key_indices = masked[i] if masked is not None else None
    try:
        with torch.no_grad():
            if question is not None and len({layer.keys.shape[2] for layer in cache.layers}) == 1:
                pos = torch.arange(start, start + question.shape[1])[None]
                first_logits = model(input_ids=question, past_key_values=cache, position_ids=pos,
                                     logits_to_keep=1).logits[0, -1]
            elif question is not None:
                # layers of different lengths (PyramidKV): transformers builds a multi-token step's mask
                # from layer 0's length and fails on the others, so the question goes one token at a time
                # (causal attention: the same computation)
                for t in range(question.shape[1]):
                    first_logits = model(input_ids=question[:, t:t + 1], past_key_values=cache,
                                         position_ids=torch.tensor([[start + t]])).logits[0, -1]
            tokens = [int(first_logits.argmax())]
            for i in range(max_new - 1):
                if tokens[-1] in eos:
                    break
                out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache,
                            position_ids=torch.tensor([[L + i]]))
                tokens.append(int(out.logits[0, -1].argmax()))
    finally:
        for layer in layers:
            layer.self_attn.masked_key_indices = None
    return tokens


def kvpress_side(spec: dict, workdir: Path) -> dict:
    import kvpress  # noqa: F401 - patches transformers' attention functions (AdaKV's masks)
    import transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    presses = kvpress_presses(spec["ratio"])
    presses = {n: p for n, p in presses.items() if n in spec["presses"]}
    eager = {n: p for n, p in presses.items() if n == "h2o"}  # ObservedAttention needs the attention weights
    sdpa = {n: p for n, p in presses.items() if n not in eager}
    out = {"side": "kvpress", "versions": {"kvpress": _dist_version("kvpress"), "transformers": transformers.__version__,
                                           "torch": torch.__version__},
           "verified": {}, "prefill_s": 0.0}
    verified_count = {p: 0 for p in PROTOCOLS}
    for j, job in enumerate(spec["jobs"]):
        ids = torch.tensor([job["ids"]])
        L, cl = ids.shape[1], job["context_len"]
        result = {"tokens": {}, "masks": {}, "ties": {}, "lens": {}}
        for protocol in job["protocols"]:
            n_c = L if protocol == "prompt" else cl
            ctx, question = ids[:, :n_c], (None if protocol == "prompt" else ids[:, cl:])
            t0 = time.perf_counter()
            runs = {}
            for group, attn in ((sdpa, "sdpa"), (eager, "eager")):
                if group:
                    logits, full_cache, own = shared_prefill(model, ctx, group, attn)
                    runs.update({n: (logits, own[n], attn) for n in group})
                    if protocol == "prompt" and attn == "sdpa" and job.get("full"):
                        result["tokens"]["prompt/full"] = kvpress_answer(model, full_cache, None, logits, None, n_c,
                                                                         L, job["max_new_tokens"], eos)
            out["prefill_s"] += time.perf_counter() - t0
            check = verified_count[protocol] < spec["verify"]
            verified_count[protocol] += check
            for name, (logits, (cache, masked, kept, ties), attn) in runs.items():
                if check:
                    ok = verify_alone(model, ctx, name, presses[name], attn, cache, masked)
                    out["verified"][f"{protocol}/{name}"] = out["verified"].get(f"{protocol}/{name}", True) and ok
                result["masks"][f"{protocol}/{name}"] = pack_mask(kept)
                if ties is not None:
                    result["ties"][f"{protocol}/{name}"] = pack_mask(ties)
                result["lens"][f"{protocol}/{name}"] = n_c
                result["tokens"][f"{protocol}/{name}"] = kvpress_answer(model, cache, masked, logits, question, n_c,
                                                                       L, job["max_new_tokens"], eos, attn)
        torch.save(result, workdir / f"kvpress_{job['key']}.pt")
        print(f"kvpress side: prompt {j + 1}/{len(spec['jobs'])} done", file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------- our side
@contextlib.contextmanager
def kept_after_prefill():
    """While active, `nats_model.engine.generation.generate` records, when its prefill returns, each layer's kept
    positions: a list that receives (layers, B * Hkv, P) bool masks (P: the prompt's length)."""
    import nats_model.engine.generation as gen

    original, seen = gen._prefill, []

    def wrapped(bridge, engine, input_ids, *args, **kwargs):
        out = original(bridge, engine, input_ids, *args, **kwargs)
        masks, span = [], input_ids.shape[1]
        for i in sorted(engine.cache.layers):
            store = engine.cache.layers[i]
            pos = store.rows(store.pos, fill=-1).masked_fill(~store.valid_rows(), -1)  # (B * Hkv, row_cap)
            m = torch.zeros(pos.shape[0], span + 1, dtype=torch.bool)
            m.scatter_(1, torch.where(pos >= 0, pos, span).cpu(), True)
            masks.append(m[:, :span])
        seen.append(torch.stack(masks))
        return out

    gen._prefill = wrapped
    try:
        yield seen
    finally:
        gen._prefill = original


def ours_job(handle, job: dict, spec: dict) -> dict:
    """Our side of one prompt: tokens and kept masks per "protocol/policy" (and "prompt/full")."""
    from nats_model.engine.generation import generate
    from nats_model.policies import build

    ids = torch.tensor([job["ids"]])
    L, cl = ids.shape[1], job["context_len"]
    result = {"tokens": {}, "masks": {}}
    runs = [("prompt", "full")] if job.get("full") else []
    runs += [(p, n) for p in job["protocols"] for n in spec["presses"]]
    for protocol, name in runs:
        n_c = L if protocol == "prompt" else cl
        policy = build("full") if name == "full" else build(name, budget_tokens=n_kept_for(n_c, spec["keep"]),
                                                            **OURS[name])
        with kept_after_prefill() as seen:
            res = generate(handle.model, ids, policy, max_new_tokens=job["max_new_tokens"],
                           compress=None if name == "full" else protocol,
                           context_len=cl if protocol == "context" else None)
        result["tokens"][f"{protocol}/{name}"] = res.tokens[0].tolist()
        if name != "full":
            result["masks"][f"{protocol}/{name}"] = seen[-1][..., :n_c]  # (layers, Hkv, n_c): the compressed span
    return result


# ---------------------------------------------------------------- driver
def build_jobs(handle, args) -> tuple[list[dict], list[dict]]:
    """The prompts (natsbench's instances through `encode_split`) and the cells [(protocol, workload, ctx,
    n, [keys])]; a prompt shared by several cells is one job."""
    from services import workloads
    from services.evaluation import encode_split

    jobs: dict[str, dict] = {}
    cells = []
    for ctx in args.contexts:
        for wl in args.workloads:
            ns = {p: cell_n(args.n, args.n_at, p, ctx) for p in args.protocols}
            most = max(ns.values())
            if most == 0:
                continue
            w = workloads.get(wl)
            params = w.validate({"context_length": ctx, "chat": "on"})
            insts = w.instances(params, most, args.seed, count_tokens=handle.count_tokens)
            keys = []
            for inst in insts:
                ids, cl = encode_split(handle, inst)
                key = prompt_key(ids)
                keys.append(key)
                job = jobs.setdefault(key, {"key": key, "ids": ids, "context_len": cl, "protocols": [],
                                            "max_new_tokens": inst.max_new_tokens, "full": False,
                                            "workload": wl, "context": ctx, "instance": inst.id,
                                            "answer": inst.answer})
                job["_inst"] = inst
            for p in args.protocols:
                if ns[p]:
                    cells.append({"protocol": p, "workload": wl, "context": ctx, "n": ns[p], "keys": keys[: ns[p]]})
                    for key in keys[: ns[p]]:
                        jobs[key]["protocols"] = sorted(set(jobs[key]["protocols"]) | {p}, key=PROTOCOLS.index)
                        jobs[key]["full"] |= p == "prompt"
    return list(jobs.values()), cells


def summarize(cells: list[dict], jobs: dict, ours: dict, kv: dict, score, presses: list[str], meta: dict) -> dict:
    """Join both sides per prompt key; `score(job, tokens) -> 0/1`. Returns the JSON summary (and prints the table)."""
    from quality_vs_kv import wilson

    rows, kept_tot = [], {}
    for cell in cells:
        names = (["full"] if cell["protocol"] == "prompt" else []) + list(presses)
        for name in names:
            label = f"{cell['protocol']}/{name}"
            acc_o = acc_k = same = 0
            agree = None
            for key in cell["keys"]:
                if key not in ours or key not in kv:
                    raise RuntimeError(f"prompt {key[:12]}: a side has no result for it")
                job = jobs[key]
                to, tk = strip_eos(ours[key]["tokens"][label], meta["eos"]), strip_eos(kv[key]["tokens"][label], meta["eos"])
                acc_o += score(job, to)
                acc_k += score(job, tk)
                same += to == tk
                if name != "full":
                    n_c = kv[key]["lens"][label]
                    km = unpack_mask(kv[key]["masks"][label], n_c)
                    ties = kv[key]["ties"].get(label)
                    ties = None if ties is None else unpack_mask(ties, n_c)
                    agree = add_agreement(agree, mask_agreement(ours[key]["masks"][label], km, ties))
            n = len(cell["keys"])
            ci_o, ci_k = wilson(acc_o, n), wilson(acc_k, n)
            row = {"protocol": cell["protocol"], "workload": cell["workload"], "context": cell["context"],
                   "press": name, "n": n, "acc_ours": acc_o / n, "ci_ours": [round(x, 4) for x in ci_o],
                   "acc_kvpress": acc_k / n, "ci_kvpress": [round(x, 4) for x in ci_k],
                   "inside": inside(acc_o / n, ci_o, acc_k / n, ci_k), "answers_equal": same / n}
            if agree is not None:
                row.update(kept_equal=agree["equal"] / agree["sets"],
                           kept_equal_up_to_ties=agree["equal_up_to_ties"] / agree["sets"],
                           kept_overlap=agree["overlap_sum"] / agree["sets"],
                           kept_same_size=agree["same_size"] / agree["sets"], sets=agree["sets"])
                kept_tot[label] = add_agreement(kept_tot.get(label), agree)
            rows.append(row)
    same_rule = [lbl for lbl in kept_tot if RULES[lbl.split("/")[1]][0]]
    summary = {"benchmark": "vs_kvpress_quality", **{k: v for k, v in meta.items() if k != "eos"},
               "kept_sets_equal_same_rule": bool(same_rule) and all(
                   kept_tot[lbl]["equal"] == kept_tot[lbl]["sets"] for lbl in same_rule),
               "kept_equal_fraction_same_rule_min": min(
                   (round(kept_tot[lbl]["equal"] / kept_tot[lbl]["sets"], 5) for lbl in same_rule), default=None),
               "kept_sets_equal_up_to_ties_same_rule": bool(same_rule) and all(
                   kept_tot[lbl]["equal_up_to_ties"] == kept_tot[lbl]["sets"] for lbl in same_rule),
               "accuracies_inside_intervals": all(r["inside"] for r in rows),
               "cells_outside": [f"{r['protocol']}/{r['press']} {r['workload']}@{r['context']}" for r in rows
                                 if not r["inside"]],
               "kept_equal_fraction": {lbl: round(t["equal"] / t["sets"], 5) for lbl, t in kept_tot.items()},
               "kept_equal_up_to_ties_fraction": {lbl: round(t["equal_up_to_ties"] / t["sets"], 5)
                                                  for lbl, t in kept_tot.items()},
               "kept_overlap": {lbl: round(t["overlap_sum"] / t["sets"], 5) for lbl, t in kept_tot.items()},
               "same_rule": {n: RULES[n][0] for n in presses},
               "rules": {n: RULES[n][1] for n in presses},
               "rows": rows}
    head = ("| protocol | press | workload@ctx | n | ours acc [95% CI] | kvpress acc [95% CI] | inside | "
            "answers equal | kept sets equal | equal up to ties | kept overlap |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        kept = (f"{r['kept_equal']:.4f} | {r['kept_equal_up_to_ties']:.4f} | {r['kept_overlap']:.4f}"
                if "kept_equal" in r else "- | - | -")
        lines.append(f"| {r['protocol']} | {r['press']} | {r['workload']}@{r['context']} | {r['n']} | "
                     f"{r['acc_ours']:.2f} [{r['ci_ours'][0]:.2f}, {r['ci_ours'][1]:.2f}] | "
                     f"{r['acc_kvpress']:.2f} [{r['ci_kvpress'][0]:.2f}, {r['ci_kvpress'][1]:.2f}] | "
                     f"{'yes' if r['inside'] else 'NO'} | {r['answers_equal']:.2f} | {kept} |")
    summary["markdown_tables"] = ["\n".join(lines)]
    return summary


def print_summary(summary: dict) -> None:
    print(f"\nnatsbench vs kvpress {summary['versions']['kvpress']['kvpress']} on {summary['model']} (fp32, cpu), "
          f"{summary['keep']:g} of the compressed length kept; kept sets per (layer, KV head) at the compression point")
    print(summary["markdown_tables"][0])
    print("\nrules:")
    for name, note in summary["rules"].items():
        print(f"  {name}: {note}")
    print(f"kept sets equal for every same-rule press: {summary['kept_sets_equal_same_rule']} "
          f"(lowest equal fraction {summary['kept_equal_fraction_same_rule_min']}; equal up to kvpress' exact score "
          f"ties at its cut: {summary['kept_sets_equal_up_to_ties_same_rule']}); accuracies inside each other's "
          f"interval: {summary['accuracies_inside_intervals']}; kvpress shared prefill verified against each press "
          f"alone: {summary['kvpress_shared_prefill_verified']}")


def skip(reason: str) -> int:
    print(f"vs_kvpress_quality: skipped: {reason}")
    print(json.dumps({"benchmark": "vs_kvpress_quality", "skipped": reason}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="passkey@1024, 3 prompts, protocol prompt")
    ap.add_argument("--n", type=int, default=None, help=f"examples per (protocol, workload, context) (default {DEFAULT_N})")
    ap.add_argument("--n-at", default=None, help=f"overrides CONTEXT=N or PROTOCOL@CONTEXT=N, 0 skips "
                                                 f"(default {DEFAULT_N_AT!r})")
    ap.add_argument("--contexts", default=None, help="comma-separated context lengths (default 1024,2048)")
    ap.add_argument("--workloads", default=None, help=f"comma-separated subset of {WORKLOADS}")
    ap.add_argument("--protocols", default=None, help=f"comma-separated subset of {PROTOCOLS}")
    ap.add_argument("--presses", default=",".join(PRESSES), help=f"comma-separated subset of {PRESSES}")
    ap.add_argument("--keep", type=float, default=0.25, help="fraction of the compressed length kept")
    ap.add_argument("--verify", type=int, default=1,
                    help="prompts per protocol on which each kvpress press also runs alone (checked bit-equal)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's)")
    ap.add_argument("--model-dir", default=str(MODEL_DIR))
    ap.add_argument("--kvpress-python", default=str(ROOT / ".venv-kvpress" / "bin" / "python"))
    ap.add_argument("--workdir", default=None, help="folder for the prompts and both sides' results (default: temp)")
    ap.add_argument("--resume", action="store_true",
                    help="with --workdir: reuse the results a run with the same spec left there")
    ap.add_argument("--side", choices=("kvpress",), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side:  # the kvpress side, in its own interpreter
        workdir = Path(args.workdir)
        spec = json.loads((workdir / "spec.json").read_text())
        (workdir / "kvpress.json").write_text(json.dumps(kvpress_side(spec, workdir)))
        return 0

    def listed(value, default, allowed, field, cast=str):
        items = [x.strip() for x in (value if value is not None else default).split(",") if x.strip()]
        try:
            items = [cast(x) for x in items]
        except ValueError:
            ap.error(f"{field} must be comma-separated ints, got {value!r}")
        if not items or (allowed and any(x not in allowed for x in items)):
            ap.error(f"{field} must be a comma-separated subset of {allowed}, got {value!r}")
        return items

    quick = args.quick
    args.workloads = listed(args.workloads, "passkey" if quick else ",".join(WORKLOADS), WORKLOADS, "--workloads")
    args.protocols = listed(args.protocols, "prompt" if quick else ",".join(PROTOCOLS), PROTOCOLS, "--protocols")
    args.presses = listed(args.presses, "", PRESSES, "--presses")
    args.contexts = listed(args.contexts, "1024" if quick else "1024,2048", None, "--contexts", int)
    if any(c < 256 for c in args.contexts):
        ap.error(f"--contexts must be ints >= 256 (the SnapKV window and the task text must fit), got {args.contexts}")
    args.n = args.n if args.n is not None else (3 if quick else DEFAULT_N)
    if args.n < 0:
        ap.error(f"--n must be an int >= 0, got {args.n}")
    try:
        args.n_at = parse_n_at(args.n_at if args.n_at is not None else ("" if quick else DEFAULT_N_AT), args.contexts)
    except ValueError as exc:
        ap.error(str(exc))
    if not 0 < args.keep < 1:
        ap.error(f"--keep must be a fraction in (0, 1), got {args.keep}")
    if args.verify < 0:
        ap.error(f"--verify must be an int >= 0, got {args.verify}")
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").exists() or not (model_dir / "model.safetensors").exists():
        return skip(f"no real model at {model_dir} (make real-model creates it)")
    problem = kvpress_problem(args.kvpress_python)
    if problem:
        return skip(problem)

    sys.path.insert(0, str(ROOT))
    from services import workloads
    from services.models import load_model

    t_start = time.perf_counter()
    handle = load_model(str(model_dir), dtype="float32")
    jobs, cells = build_jobs(handle, args)
    if not cells:
        ap.error("--n / --n-at leave no cell to run")
    with tempfile.TemporaryDirectory(prefix="vs_kvpress_quality-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        spec = {"model_dir": str(model_dir), "keep": args.keep, "ratio": 1 - args.keep, "presses": args.presses,
                "verify": args.verify, "jobs": [{k: v for k, v in j.items() if k != "_inst"} for j in jobs]}
        same = args.resume and (workdir / "spec.json").exists() and \
            json.loads((workdir / "spec.json").read_text()) == json.loads(json.dumps(spec))
        (workdir / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        t0 = time.perf_counter()
        cmd = [args.kvpress_python, str(Path(__file__).resolve()), "--side", "kvpress", "--workdir", str(workdir)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if not (same and (workdir / "kvpress.json").exists()):
            proc = subprocess.run(cmd, env=env, cwd=ROOT)
            if proc.returncode != 0:
                raise RuntimeError(f"the kvpress side failed (exit {proc.returncode}); its error is above")
        kv_s = time.perf_counter() - t0
        kv_info = json.loads((workdir / "kvpress.json").read_text())
        kv = {j["key"]: torch.load(workdir / f"kvpress_{j['key']}.pt") for j in jobs}
        t0 = time.perf_counter()
        ours = {}
        for i, job in enumerate(jobs):
            path = workdir / f"ours_{job['key']}.pt"
            ours[job["key"]] = torch.load(path) if same and path.exists() else ours_job(handle, job, spec)
            torch.save(ours[job["key"]], path)
            print(f"our side: prompt {i + 1}/{len(jobs)} done", file=sys.stderr, flush=True)
        ours_s = time.perf_counter() - t0
    by_key = {j["key"]: j for j in jobs}

    def score(job, tokens):
        inst = job["_inst"]
        return float(workloads.get(job["workload"]).score(handle.decode(tokens), inst))

    import transformers

    meta = {"model": model_dir.name, "keep": args.keep, "seed": args.seed, "presses": args.presses,
            "protocols": args.protocols, "contexts": args.contexts, "workloads": args.workloads,
            "n_cells": {f"{c['protocol']}@{c['context']}": c["n"] for c in cells},
            "prompt_tokens": {str(c): sorted({len(j["ids"]) for j in jobs if j["context"] == c}) for c in args.contexts},
            "versions": {"kvpress": kv_info["versions"], "ours": {"transformers": transformers.__version__,
                                                                 "torch": torch.__version__}},
            "kvpress_shared_prefill_verified": all(kv_info["verified"].values()) if kv_info["verified"] else None,
            "kvpress_verified": kv_info["verified"], "threads": torch.get_num_threads(),
            "eos": handle.tokenizer.eos_token_id}
    summary = summarize(cells, by_key, ours, kv, score, args.presses, meta)
    summary.update(kvpress_side_s=round(kv_s, 1), ours_side_s=round(ours_s, 1),
                   wall_s=round(time.perf_counter() - t_start, 1))
    print_summary(summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
