"""natsbench's speed on a real pretrained LLM: SmolLM2-135M-Instruct, prefill TTFT and decode ms/token
vs transformers' own forward and DynamicCache decode, and the memory-bandwidth floor of a decode step.

Model: `models/smollm2-135m-instruct` (30-layer Llama, hidden 576, 9 query / 3 KV heads of dim 64,
vocabulary 49152, tied embeddings), loaded by `services.models.load_model(..., dtype="float32")`;
batch 1, `--threads` torch threads (default 1). The prompt of each context is real English text (the
standard library's docstrings, `nats_model.data.haystack.english_text`), tokenized and cut to exactly
the context's length. Per context, side by side in this one process (so a change in the shared
machine's load hits every row alike; the numbers are ratios within one run, not absolute speeds):

- `hf`: transformers' forward `model(ids, use_cache=True, logits_to_keep=1)` (TTFT: prompt in, first
  greedy token out), then a greedy loop feeding its DynamicCache back (`cache=`, formerly `past_key_values`);
- `full` and every evicting policy at `--budget` kept (`nats_model.policies.build(name, budget=...)`):
  `nats_model.engine.generation.generate(model, ids, policy, max_new_tokens=--new-tokens)` (512-token prefill
  chunks); TTFT is its `ttft_s`.

Decode ms/token is the median of the per-token times of the `--new-tokens` - 1 later tokens (each
token's time: from the previous token picked to this one picked; for `generate` these are read by
timing its token picks; their mean is shown beside them). Prefill of `hf` and `full` runs
`--repeats` times alternately (best of each); the other policies once.

The memory-bandwidth floor of a decode step is (bytes of the weights, tied ones once + bytes of the
K and V the step reads: the cache's kept bytes) / the bandwidth measured here with a large copy
(`Tensor.copy_` of a `--copy-gib` tensor into a touched one, best of 3, counting bytes read + written;
a fresh `clone` would time its page faults too). A `full` decode
step's time goes where torch.profiler says: `--profile-steps` more decode steps of the `full` row at
`--profile-context` tokens, after its timed ones, top ops by self CPU time (top 15 in the JSON).
`--quick` (make bench QUICK=1): 1k and 4k, the evicting policies at 1k only (hf and full at both).

Targets (issue 20): `full` decode <= 2.0x the floor (moonshot 1.5x) and `full` prefill TTFT <= 1.0x
transformers', at every context. Human table first; the LAST line is one JSON object (its `targets`
list says met true / false with the measured numbers).

    flock /tmp/natsbench-heavy.lock .venv/bin/python benchmarks/real_model.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "smollm2-135m-instruct"
POLICIES = ("streaming_llm", "h2o", "snapkv", "tova")
TOP_OPS = 15


def ctx_label(ctx: int) -> str:
    """8192 -> "8k"; a context that is not a whole number of k keeps its digits."""
    return f"{ctx // 1024}k" if ctx % 1024 == 0 else str(ctx)


# ---------------------------------------------------------------- inputs
def prompt_ids(tokenizer, length: int) -> torch.Tensor:
    """(1, length) token ids of real English text (the haystack text, repeated if it is too short)."""
    from nats_model.data.haystack import english_text

    text = english_text()
    n_chars = 4 * length
    while True:
        chunk = (text * (1 + n_chars // len(text)))[:n_chars]
        ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            return torch.tensor(ids[:length], dtype=torch.long)[None]
        n_chars *= 2


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers, a tensor shared by several names counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def kv_bytes(model, kept_tokens: int, element_bytes: int = 4) -> int:
    """K and V bytes of `kept_tokens` tokens in every layer and KV head."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * kept_tokens * element_bytes


def copy_bandwidth(gib: float, repeats: int = 3) -> float:
    """Bytes per second of copying a `gib` GiB float32 tensor into another one (read + written), best of
    `repeats`. The destination is allocated and touched first: a fresh `clone` each time would also
    time the page faults of its new memory (measured here: about half the bandwidth)."""
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    y = torch.zeros_like(x)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        y.copy_(x)
        best = min(best, time.perf_counter() - t0)
    return 2 * x.numel() * 4 / best


# ---------------------------------------------------------------- the timed runs
@contextlib.contextmanager
def token_clock(on_token=None):
    """Times every token `nats_model.engine.generation.generate` picks: yields a list that receives a
    `time.perf_counter()` after each pick (the first: prefill done; then one per decode step);
    `on_token(n)` runs after the n-th pick is stamped (n = 1, 2, ...)."""
    import nats_model.engine.generation as gen

    original, stamps = gen._pick, []

    def timed_pick(*args, **kwargs):
        tok = original(*args, **kwargs)
        stamps.append(time.perf_counter())
        if on_token is not None:  # after the stamp: its cost falls on the next token's time
            on_token(len(stamps))
        return tok

    gen._pick = timed_pick
    try:
        yield stamps
    finally:
        gen._pick = original


def generate_kwargs(policy) -> dict:
    """`compress=` the policy's default compression protocol where `generate` takes one."""
    import inspect

    from nats_model.engine.generation import generate

    protocol = getattr(policy, "default_protocol", None)
    if protocol is None or "compress" not in inspect.signature(generate).parameters:
        return {}
    return {"compress": protocol}


def per_token_ms(stamps: list[float]) -> list[float]:
    return [1e3 * (b - a) for a, b in zip(stamps, stamps[1:], strict=False)]


@torch.no_grad()
def run_hf(model, ids: torch.Tensor, new_tokens: int) -> dict:
    """transformers' own prefill (TTFT) and greedy DynamicCache decode."""
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    stamps = [time.perf_counter()]
    cache = out.cache  # a DynamicCache (transformers 5.25 names it `cache`, formerly `past_key_values`)
    for _ in range(new_tokens - 1):
        out = model(input_ids=tok, cache=cache, use_cache=True)
        cache = out.cache
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        stamps.append(time.perf_counter())
    steps = per_token_ms(stamps)
    return {"ttft_s": stamps[0] - t0, "decode_ms": statistics.median(steps), "decode_mean_ms": statistics.mean(steps),
            "kv_bytes_read": kv_bytes(model, ids.shape[1] + new_tokens - 1)}


@torch.no_grad()
def run_policy(model, ids: torch.Tensor, name: str, budget: float, new_tokens: int, profile_steps: int = 0) -> dict:
    """natsbench's generate with policy `name` (`full`, or an evicting policy at `budget` kept). With
    `profile_steps`, that many more decode steps run after the timed ones under torch.profiler (the
    same prefill serves both) and the row's `profile` lists the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    from nats_model.engine.generation import generate
    from nats_model.policies import build

    policy = build(name) if name == "full" else build(name, budget=budget)
    prof = profile(activities=[ProfilerActivity.CPU]) if profile_steps else None

    def on_token(n: int) -> None:
        if n == new_tokens:
            prof.start()
        elif n == new_tokens + profile_steps:
            prof.stop()

    with token_clock(on_token if prof is not None else None) as stamps:
        res = generate(model, ids, policy, max_new_tokens=new_tokens + profile_steps, **generate_kwargs(policy))
    steps = per_token_ms(stamps[:new_tokens])
    kept_bytes = int(res.kv_bytes_kept)
    if profile_steps:  # `full` only: the bytes the timed steps read, before the profiled steps appended more
        kept_bytes -= kv_bytes(model, profile_steps)
    row = {"ttft_s": res.ttft_s, "decode_ms": statistics.median(steps), "decode_mean_ms": statistics.mean(steps),
           "kv_bytes_read": kept_bytes, "kept_fraction": float(res.kept_fraction)}
    if prof is not None:
        row["profile"] = top_ops(prof, profile_steps)
    return row


def top_ops(prof, steps: int, top: int = TOP_OPS) -> list[dict]:
    """The `top` ops of a finished profile by self CPU time, per step."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "calls_per_step": round(e.count / steps, 1),
             "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 3),
             "self_cpu_share": round(e.self_cpu_time_total / total_us, 4)} for e in events[:top]]


def measure_context(model, tokenizer, ctx: int, args, policies: list[str]) -> dict[str, dict]:
    """Every row of one context, side by side: hf / full alternately `repeats` times, then the policies.
    At `--profile-context` the last `full` run goes on for `--profile-steps` profiled decode steps."""
    ids = prompt_ids(tokenizer, ctx)
    rows: dict[str, dict] = {}
    for i in range(args.repeats):
        for name in ("hf", "full"):
            if name == "hf":
                r = run_hf(model, ids, args.new_tokens)
            else:
                profiled = args.profile_steps if ctx == args.profile_context and i == args.repeats - 1 else 0
                r = run_policy(model, ids, "full", 1.0, args.new_tokens, profiled)
            best = rows.get(name)
            if best is None:
                rows[name] = r
            else:  # best TTFT of the repeats; decode: the median of every repeat's per-token medians
                best["ttft_s"] = min(best["ttft_s"], r["ttft_s"])
                best.setdefault("decode_runs_ms", [best["decode_ms"]]).append(r["decode_ms"])
                best["decode_ms"] = statistics.median(best["decode_runs_ms"])
                if "profile" in r:
                    best["profile"] = r["profile"]
    for name in policies:
        rows[name] = run_policy(model, ids, name, args.budget, args.new_tokens)
    return rows


# ---------------------------------------------------------------- report
def summarize(results: dict[int, dict[str, dict]], weights: int, bandwidth: float, profile_rows: list[dict],
              args, wall_s: float) -> dict:
    """The JSON summary: per-row tables, the floor ratios, the targets."""
    summary: dict = {"benchmark": "real_model", "model": args.model, "threads": args.threads,
                     "contexts": list(results), "budget": args.budget, "new_tokens": args.new_tokens,
                     "repeats": args.repeats, "quick": args.quick, "weight_bytes": weights,
                     "copy_bandwidth_gb_s": round(bandwidth / 1e9, 3),
                     "note": "shared machine: timings are ratios within this one run"}
    for ctx, rows in results.items():
        lab = ctx_label(ctx)
        full, hf = rows["full"], rows["hf"]
        floor_ms = 1e3 * (weights + full["kv_bytes_read"]) / bandwidth
        summary[f"floor_ms_{lab}"] = round(floor_ms, 3)
        summary[f"full_decode_over_floor_{lab}"] = round(full["decode_ms"] / floor_ms, 3)
        summary[f"full_decode_over_hf_{lab}"] = round(full["decode_ms"] / hf["decode_ms"], 3)
        summary[f"full_ttft_over_hf_{lab}"] = round(full["ttft_s"] / hf["ttft_s"], 3)
    summary["max_full_decode_over_floor"] = max(summary[f"full_decode_over_floor_{ctx_label(c)}"] for c in results)
    summary["max_full_ttft_over_hf"] = max(summary[f"full_ttft_over_hf_{ctx_label(c)}"] for c in results)
    summary["decode_ms_per_token"] = {f"{n}@{c}": round(r["decode_ms"], 3) for c, rows in results.items()
                                      for n, r in rows.items()}
    summary["ttft_s"] = {f"{n}@{c}": round(r["ttft_s"], 4) for c, rows in results.items() for n, r in rows.items()}
    summary["decode_over_floor"] = {
        f"{n}@{c}": round(r["decode_ms"] / (1e3 * (weights + r["kv_bytes_read"]) / bandwidth), 3)
        for c, rows in results.items() for n, r in rows.items()}
    summary["profile_context"] = args.profile_context if profile_rows else None
    summary["profile_full_decode_top_ops"] = profile_rows
    targets = [
        {"name": "max_full_decode_over_floor", "value": summary["max_full_decode_over_floor"], "limit": 2.0},
        {"name": "max_full_decode_over_floor (moonshot)", "value": summary["max_full_decode_over_floor"],
         "limit": 1.5},
        {"name": "max_full_ttft_over_hf", "value": summary["max_full_ttft_over_hf"], "limit": 1.0},
    ]
    for t in targets:
        t["met"] = bool(t["value"] <= t["limit"])
    summary["targets"] = targets
    table = ["| row | context | TTFT s | TTFT / hf | decode ms/token | decode / hf | decode / floor |",
             "|---|---|---|---|---|---|---|"]
    for ctx, rows in results.items():
        for n, r in rows.items():
            key = f"{n}@{ctx}"
            table.append(f"| {n} | {ctx} | {r['ttft_s']:.3f} | {r['ttft_s'] / rows['hf']['ttft_s']:.3f} | "
                         f"{r['decode_ms']:.2f} | {r['decode_ms'] / rows['hf']['decode_ms']:.3f} | "
                         f"{summary['decode_over_floor'][key]:.2f} |")
    tables = ["\n".join(table)]
    if profile_rows:
        tables.append("\n".join([f"`full` decode step at {args.profile_context} tokens, top ops by self CPU time "
                                 "(torch.profiler):", "", "| op | calls/step | self ms/step | share |",
                                 "|---|---|---|---|"]
                                + [f"| {r['op']} | {r['calls_per_step']:g} | {r['self_cpu_ms_per_step']:.3f} | "
                                   f"{r['self_cpu_share']:.1%} |" for r in profile_rows]))
    summary["markdown_tables"] = tables
    summary["wall_s"] = round(wall_s, 1)
    return summary


def print_tables(results: dict[int, dict[str, dict]], weights: int, bandwidth: float, profile_rows: list[dict],
                 summary: dict, args) -> None:
    print(f"\n{args.model}, fp32, cpu, {args.threads} thread(s), batch 1, real-text prompt, "
          f"{args.new_tokens} new tokens (decode: median ms of the later tokens), evicting policies at "
          f"{args.budget:g} kept")
    print("shared machine: every row was measured side by side in this one run; compare ratios, not absolutes")
    print(f"weights {weights / 2**20:.1f} MiB, copy bandwidth {bandwidth / 1e9:.2f} GB/s "
          f"(copy of {args.copy_gib:g} GiB, read + written, best of 3)")
    print(f"{'row':<15}{'context':>8}{'TTFT s':>9}{'/ hf':>7}{'decode ms':>11}{'mean ms':>9}{'/ hf':>7}"
          f"{'KV MiB':>8}{'floor ms':>10}{'/ floor':>9}")
    for ctx, rows in results.items():
        hf = rows["hf"]
        for name, r in rows.items():
            floor_ms = 1e3 * (weights + r["kv_bytes_read"]) / bandwidth
            print(f"{name:<15}{ctx:>8}{r['ttft_s']:>9.2f}{r['ttft_s'] / hf['ttft_s']:>7.2f}{r['decode_ms']:>11.2f}"
                  f"{r['decode_mean_ms']:>9.2f}{r['decode_ms'] / hf['decode_ms']:>7.2f}"
                  f"{r['kv_bytes_read'] / 2**20:>8.1f}{floor_ms:>10.2f}{r['decode_ms'] / floor_ms:>9.2f}")
    if profile_rows:
        print(f"\nwhere a `full` decode step's time goes at {args.profile_context} tokens "
              f"(torch.profiler, {args.profile_steps} steps, top ops by self CPU time):")
        print(f"{'op':<40}{'calls/step':>11}{'self ms/step':>14}{'share':>8}")
        for r in profile_rows:
            print(f"{r['op'][:39]:<40}{r['calls_per_step']:>11g}{r['self_cpu_ms_per_step']:>14.3f}"
                  f"{r['self_cpu_share']:>8.1%}")
    print("\ntargets:")
    for t in summary["targets"]:
        print(f"  {t['name']:<40} {t['value']:>8.3f} <= {t['limit']:<5g} {'met' if t['met'] else 'MISSED'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1k and 4k only, evicting policies at 1k only (make bench QUICK=1)")
    p.add_argument("--model", default=MODEL, help="a models/ name or a random: test model")
    p.add_argument("--contexts", default="1024,4096,8192", help="prompt lengths in tokens, comma-separated")
    p.add_argument("--policies", default=",".join(POLICIES), help="evicting policies run at --budget")
    p.add_argument("--budget", type=float, default=0.1, help="kept fraction of the evicting policies")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per row (>= 2)")
    p.add_argument("--repeats", type=int, default=1, help="hf / full runs alternately per context (best TTFT)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--copy-gib", type=float, default=1.0, help="size of the bandwidth-measuring copy")
    p.add_argument("--profile-context", type=int, default=4096, help="the context (one of --contexts) whose full row is profiled")
    p.add_argument("--profile-steps", type=int, default=4)
    args = p.parse_args(argv)
    try:
        args.context_list = [int(c) for c in args.contexts.split(",") if c]
    except ValueError:
        p.error(f"--contexts must be comma-separated ints, got {args.contexts!r}")
    if args.quick:
        args.context_list = [c for c in args.context_list if c <= 4096] or args.context_list[:1]
    args.policy_list = [x for x in args.policies.split(",") if x]
    bad = [x for x in args.policy_list if x not in POLICIES]
    if bad:
        p.error(f"--policies: unknown {', '.join(bad)}; allowed: {', '.join(POLICIES)}")
    if not args.context_list or min(args.context_list) < 2:
        p.error(f"--contexts must be ints >= 2, got {args.contexts!r}")
    if not 0 < args.budget <= 1:
        p.error(f"--budget must be in (0, 1], got {args.budget}")
    if args.new_tokens < 2:
        p.error(f"--new-tokens must be >= 2, got {args.new_tokens}")
    for name in ("repeats", "threads", "profile_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.copy_gib > 0:
        p.error(f"--copy-gib must be > 0, got {args.copy_gib}")
    if args.profile_context < 0:
        p.error(f"--profile-context must be >= 0, got {args.profile_context}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from services.models import load_model

    try:
        handle = load_model(args.model, dtype="float32")
    except ValueError as exc:
        print(f"--model {args.model!r}: {exc} (fetch it with `natsbench model fetch {MODEL}`)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, tokenizer = handle.model, handle.tokenizer
    weights = weight_bytes(model)
    bandwidth = copy_bandwidth(args.copy_gib)
    with torch.no_grad():  # warm-up: the first calls of each path pay one-off set-up costs
        warm = prompt_ids(tokenizer, min(256, min(args.context_list)))
        run_hf(model, warm, 2)
        run_policy(model, warm, "full", 1.0, 2)
    results = {}
    for ctx in args.context_list:  # --quick: the evicting policies at the shortest context only
        policies = args.policy_list if not args.quick or ctx == min(args.context_list) else []
        results[ctx] = measure_context(model, tokenizer, ctx, args, policies)
    profile_rows = results.get(args.profile_context, {}).get("full", {}).get("profile", [])
    summary = summarize(results, weights, bandwidth, profile_rows, args, time.perf_counter() - t_start)
    print_tables(results, weights, bandwidth, profile_rows, summary, args)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
