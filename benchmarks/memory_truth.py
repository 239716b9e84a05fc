"""Memory truth: the bytes the KV cache really holds, per policy and batch, and the process's peak
memory during a long prefill + decode at 10% kept vs the full cache.

Model: the small GPT with random weights of `decode_latency.py` (4 layers, d_model 512, 8 query /
8 KV heads of dim 64, byte vocabulary 256, fp32; `nats`: the same weights plus its randomly
initialised type scorers, `decode_latency.model_for`). Its weights are ~50 MiB while the full
cache holds 16 KiB per token (4 layers x 2 x 8 heads x 64 x 4 B): 256 MiB at 16k tokens, so the KV
cache dominates the memory of a long run.

1. Physical over kept (in this process, through the public `generate`, prefill chunks of 512):
   for every policy (`full`, and the others at `--budget` of the tokens seen) and every batch size
   (`--batches`; batch > 1 left-pads its sequences to different lengths, so segments differ and
   the layout is not one common capacity), a forward hook on the model reads the engine's cache
   after every prefill chunk and every decode step. Physical bytes = the sizes of the storages of
   every layer's K and V tensors (`untyped_storage().nbytes()`, read from the tensors, not from
   the cache's own accounting, which is checked against it); kept bytes = kept tokens (summed
   over layers, sequences, KV heads) x 2 x head_dim x itemsize. `max_physical_over_kept` is the
   largest ratio after the prefill and after any decode step, of any policy and batch (target
   <= 1.05; the cache's documented bound is 1.05 x kept + one slot per segment).
   `max_physical_over_kept_mid_prefill` is the largest after any earlier prefill chunk: there a
   left-padded batch has segments that hold no or a few dozen tokens, one slack slot each, so the
   ratio of a cache of a few hundred KiB can pass 1.05 (within the bound). Positions and policy
   scores (metadata) are reported apart (`meta_over_kept`).
2. Peak memory (batch 1): a `--peak-tokens` prompt (16384; `--quick`: 4096) prefilled in chunks of
   512, then `--peak-decode` new tokens, each configuration in a fresh child process. CPU: the torch
   CPU allocator keeps no peak counter, so the child reads the kernel's: it runs a short warm-up
   generate, resets the RSS high-water mark (Linux: `5` into /proc/self/clear_refs, so `VmHWM`
   restarts at the current `VmRSS`), runs the measured generate and reads `VmHWM`; the run's
   memory is `VmHWM - VmRSS before` (weights, prompt and interpreter excluded). Where clear_refs
   cannot be written the child falls back to `ru_maxrss` (a peak since process start, so an upper
   bound) and says so in `measure`. CUDA: `max_memory_allocated` after `reset_peak_memory_stats`,
   minus `memory_allocated` before. `peak_prefill_decode_10pct_over_full` = the largest run
   memory over `full`'s of the policies that keep 10% during prefill too (all but SnapKV, which
   by design holds the whole prompt until its end: `..._with_snapkv` includes it);
   `peak_prefill_decode_10pct_over_full_nats` is NAtS's.

Human tables first; the LAST line is one JSON object. Run it under the shared lock:

    flock /tmp/natsbench-heavy.lock .venv/bin/python benchmarks/memory_truth.py [--quick]
        [--policies streaming_llm,h2o,snapkv,tova,nats] [--batches 1,4] [--budget 0.1]
        [--ratio-tokens 4096] [--ratio-decode 256] [--peak-tokens 16384] [--peak-decode 32] [--device cpu]

Full (default): ratio table on a 4096-token prompt + 256 decode steps, peak at 16384 tokens (~3 min).
`--quick` (`make bench QUICK=1`): ratio table on 2048 tokens + 96 steps, peak at 4096 tokens.
The cache's bound has one slot per (layer, sequence, KV head) on top of 1.05 x kept, so with ~100
kept tokens per head (a 1024-token prompt at 10%) the ratio can reach ~1.06 by design.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_latency import model_for  # noqa: E402  (the GPT + NAtS twin every decode benchmark uses)
from prefill import _reset_peak_rss, _rss_bytes  # noqa: E402  (VmRSS / VmHWM and the HWM reset)

from nats_model.engine.generation import generate  # noqa: E402
from nats_model.models.gpt import GPT, GPTConfig  # noqa: E402
from nats_model.policies import build  # noqa: E402

POLICIES = ("streaming_llm", "h2o", "snapkv", "tova", "nats")
# compress the prompt once, at its end (SnapKV, as the original): the cache holds the whole prompt
# during prefill, so their peak is the full cache's by design and they are left out of the headline
PROMPT_AT_END = ("snapkv",)
CHUNK = 512
WARMUP_TOKENS = 256
MIB = 1 << 20


def fail(msg: str) -> None:
    print(f"memory_truth: {msg}", file=sys.stderr)
    sys.exit(2)


def make_model(max_len: int, device: torch.device) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, n_layer=4, n_head=8, n_kv_head=8, d_model=512, max_seq_len=max_len)
    return GPT(cfg).to(device).eval()


def policy_for(name: str, budget: float):
    return build(name) if name == "full" else build(name, budget=budget)


def storage_bytes(cache) -> tuple[int, int]:
    """(K/V bytes, metadata bytes) of a KVCache, from the tensors' storages (each storage once)."""
    kv, meta, seen = 0, 0, set()
    for store in cache.layers.values():
        for t, is_kv in [(store.k, True), (store.v, True), (store.pos, False)] + [(a, False) for a in store.aux.values()]:
            s = t.untyped_storage()
            if s.data_ptr() in seen:
                continue
            seen.add(s.data_ptr())
            if is_kv:
                kv += s.nbytes()
            else:
                meta += s.nbytes()
    return kv, meta


def kept_bytes(cache) -> int:
    """Kept tokens (layers x sequences x KV heads) x bytes of one token's K and V in one head."""
    per_token = 0
    for store in cache.layers.values():
        per_token = 2 * store.head_dim * store.k.element_size()
    return sum(int(s.lens.sum()) for s in cache.layers.values()) * per_token


def prompt(batch: int, tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random byte prompts (batch, tokens); sequence b is left-padded by b * tokens // (2 * batch)."""
    g = torch.Generator().manual_seed(tokens + batch)
    ids = torch.randint(0, 256, (batch, tokens), generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    for b in range(batch):
        mask[b, : b * tokens // (2 * batch)] = 0
    return ids.to(device), mask.to(device)


@torch.no_grad()
def ratio_cell(model: GPT, name: str, budget: float, batch: int, tokens: int, steps: int,
               device: torch.device) -> dict:
    """One (policy, batch): physical / kept after every prefill chunk and every decode step."""
    net = model_for(model, name)
    n_chunks = -(-tokens // CHUNK)
    samples: list[tuple[int, int, int, int]] = []  # (physical from storages, accounted physical, kept, meta)

    def hook(_module, _args, kwargs, _out):
        cache = kwargs["kv_engine"].cache
        kv, meta = storage_bytes(cache)
        samples.append((kv, cache.kv_bytes_physical(), kept_bytes(cache), meta))

    handle = net.register_forward_hook(hook, with_kwargs=True)
    try:
        ids, mask = prompt(batch, tokens, device)
        res = generate(net, ids, policy_for(name, budget), steps + 1, attention_mask=mask, prefill_chunk_size=CHUNK)
    finally:
        handle.remove()
    if len(samples) != n_chunks + steps:
        raise RuntimeError(f"{name}: expected {n_chunks + steps} forwards, saw {len(samples)}")
    ratios = [kv / kept for kv, _, kept, _ in samples]
    last = samples[-1]
    return {"policy": name, "batch": batch, "budget": 1.0 if name == "full" else budget, "prompt_tokens": tokens,
            "decode_steps": steps, "kept_fraction": round(res.kept_fraction, 4),
            "after_prefill": round(ratios[n_chunks - 1], 5), "max_mid_prefill": round(max(ratios[:n_chunks]), 5),
            "max_decode": round(max(ratios[n_chunks:], default=ratios[-1]), 5),
            "max_physical_over_kept": round(max(ratios[n_chunks - 1:]), 5),
            "meta_over_kept": round(max(m / kept for _, _, kept, m in samples), 5),
            "accounting_matches_storage": all(kv == acc for kv, acc, _, _ in samples),
            "kv_mib_physical": round(last[0] / MIB, 3), "kv_mib_kept": round(last[2] / MIB, 3),
            "kv_mib_full": round(res.kv_bytes_full / MIB, 3),
            "kv_mib_physical_peak_engine": round(res.kv_bytes_physical_peak / MIB, 3)}


# ------------------------------------------------------------------------------- peak (child process)
@torch.no_grad()
def peak_child(name: str, budget: float, tokens: int, steps: int, device: torch.device) -> dict:
    model = model_for(make_model(tokens + steps + 16, device), name)
    ids, _ = prompt(1, tokens, device)
    generate(model, prompt(1, WARMUP_TOKENS, device)[0], policy_for(name, budget), 2, prefill_chunk_size=CHUNK)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before, measure = torch.cuda.memory_allocated(device), "cuda_max_memory_allocated"
    else:
        before = _rss_bytes("VmRSS")
        _reset_peak_rss()
        measure = "vmhwm_after_clear_refs" if _rss_bytes("VmHWM") <= before + MIB else "ru_maxrss_since_start"
    t0 = time.perf_counter()
    res = generate(model, ids, policy_for(name, budget), steps + 1, prefill_chunk_size=CHUNK)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    elif measure == "vmhwm_after_clear_refs":
        peak = _rss_bytes("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"policy": name, "budget": 1.0 if name == "full" else budget, "tokens": tokens, "decode_steps": steps,
            "measure": measure, "before_bytes": before, "peak_bytes": peak, "run_bytes": max(0, peak - before),
            "kv_bytes_physical_peak": res.kv_bytes_physical_peak, "kv_bytes_physical_end": res.kv_bytes_physical,
            "kv_bytes_full": res.kv_bytes_full, "kept_fraction": round(res.kept_fraction, 4),
            "seconds": round(seconds, 2)}


def spawn_peak(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-cell", name, "--budget", str(args.budget),
           "--peak-tokens", str(args.peak_tokens), "--peak-decode", str(args.peak_decode),
           "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"memory_truth: peak cell {name} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policies", default=",".join(POLICIES), help="policies at --budget (full always runs)")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--ratio-tokens", type=int, default=4096)
    ap.add_argument("--ratio-decode", type=int, default=256)
    ap.add_argument("--peak-tokens", type=int, default=16384)
    ap.add_argument("--peak-decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true",
                    help="make bench QUICK=1: ratio table on 2048 tokens + 96 steps, peak at 4096 tokens")
    ap.add_argument("--peak-cell", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.ratio_tokens, args.ratio_decode, args.peak_tokens = 2048, 96, 4096
    names = [p for p in args.policies.split(",") if p]
    bad = [p for p in names if p not in POLICIES]
    if bad or not names:
        fail(f"--policies: unknown {','.join(bad) or '(none)'}; allowed: {','.join(POLICIES)}")
    args.policy_list = names
    try:
        args.batch_list = [int(b) for b in args.batches.split(",")]
    except ValueError:
        args.batch_list = []
    if not args.batch_list or min(args.batch_list) < 1:
        fail(f"--batches: {args.batches!r}; allowed: comma-separated ints >= 1, e.g. 1,4")
    if not 0 < args.budget < 1:
        fail(f"--budget: {args.budget}; allowed: a fraction of the tokens seen in (0, 1)")
    for field, value, least in (("--ratio-tokens", args.ratio_tokens, 64), ("--peak-tokens", args.peak_tokens, 512),
                                ("--ratio-decode", args.ratio_decode, 1), ("--peak-decode", args.peak_decode, 1),
                                ("--threads", args.threads, 1)):
        if value < least:
            fail(f"{field}: {value}; allowed: an int >= {least}")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        fail(f"--device: {args.device!r}; allowed: cpu, cuda, cuda:<index>")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device: {args.device!r} but CUDA is not available here; allowed: cpu")
    if args.peak_cell is not None and args.peak_cell not in ("full", *POLICIES):
        fail(f"--peak-cell: {args.peak_cell!r}; allowed: full,{','.join(POLICIES)}")
    return args


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.peak_cell is not None:
        print(json.dumps(peak_child(args.peak_cell, args.budget, args.peak_tokens, args.peak_decode, device)))
        return 0
    t_start = time.perf_counter()
    runs = ["full", *args.policy_list]
    model = make_model(args.ratio_tokens + args.ratio_decode + 16, device)
    rows = [ratio_cell(model, name, args.budget, batch, args.ratio_tokens, args.ratio_decode, device)
            for batch in args.batch_list for name in runs]
    print(f"KV physical / kept, GPT 4x512 (8 KV heads x 64), fp32, {device}, prompt {args.ratio_tokens} tokens "
          f"(batch > 1: left-padded to different lengths), prefill chunks of {CHUNK}, {args.ratio_decode} decode steps")
    print(f"{'policy':<15}{'batch':>6}{'budget':>7}{'kept':>8}{'after prefill':>14}{'mid prefill':>12}"
          f"{'max decode':>11}{'meta/kept':>10}{'KV MiB':>9}{'full MiB':>9}")
    for r in rows:
        print(f"{r['policy']:<15}{r['batch']:>6}{r['budget']:>7g}{r['kept_fraction']:>8.3f}{r['after_prefill']:>14.4f}"
              f"{r['max_mid_prefill']:>12.4f}{r['max_decode']:>11.4f}{r['meta_over_kept']:>10.3f}"
              f"{r['kv_mib_physical']:>9.2f}{r['kv_mib_full']:>9.2f}")

    peaks = {name: spawn_peak(name, args) for name in runs}
    full = peaks["full"]
    pct = round(args.budget * 100)
    print(f"\npeak memory, {args.peak_tokens}-token prompt (chunks of {CHUNK}) + {args.peak_decode} decode steps, "
          f"batch 1, {device}, {args.threads} thread(s); run = peak - before ({full['measure']})")
    print(f"{'policy':<15}{'budget':>7}{'run MiB':>9}{'/ full':>8}{'peak MiB':>10}{'KV peak MiB':>12}"
          f"{'KV end MiB':>11}{'s':>7}")
    for name, p in peaks.items():
        print(f"{name:<15}{p['budget']:>7g}{p['run_bytes'] / MIB:>9.1f}{p['run_bytes'] / full['run_bytes']:>8.3f}"
              f"{p['peak_bytes'] / MIB:>10.1f}{p['kv_bytes_physical_peak'] / MIB:>12.1f}"
              f"{p['kv_bytes_physical_end'] / MIB:>11.1f}{p['seconds']:>7.1f}")

    over_full = {n: round(peaks[n]["run_bytes"] / full["run_bytes"], 4) for n in args.policy_list}
    headline = [v for n, v in over_full.items() if n not in PROMPT_AT_END]
    table = {f"{r['policy']}@b{r['batch']}": {k: r[k] for k in ("after_prefill", "max_mid_prefill", "max_decode",
                                                                 "max_physical_over_kept", "meta_over_kept",
                                                                 "kept_fraction", "accounting_matches_storage")}
             for r in rows}
    summary = {
        "benchmark": "memory_truth", "device": str(device), "threads": args.threads, "budget": args.budget,
        "context": (f"ratio: {args.ratio_tokens}-token prompt + {args.ratio_decode} decode steps, batches "
                    f"{args.batches}; peak: {args.peak_tokens}-token prompt + {args.peak_decode} decode steps, batch 1"
                    + (" (--quick: 4096 tokens, not 16384)" if args.quick else "")),
        "model": "random GPT 4x512, 8 KV heads x 64, fp32, vocab 256 (weights ~50 MiB, KV 16 KiB/token)",
        "max_physical_over_kept": max(r["max_physical_over_kept"] for r in rows),
        "max_physical_over_kept_mid_prefill": max(r["max_mid_prefill"] for r in rows),
        "accounting_matches_storage": all(r["accounting_matches_storage"] for r in rows),
        "physical_over_kept": table,
        f"peak_prefill_decode_{pct}pct_over_full": max(headline, default=None),
        f"peak_prefill_decode_{pct}pct_over_full_with_snapkv": max(over_full.values()),
        f"peak_prefill_decode_{pct}pct_over_full_nats": over_full.get("nats"),
        "peak_over_full_per_policy": over_full,
        "peak_tokens": args.peak_tokens,
        "peak_measure": full["measure"],
        "peak_run_mib": {n: round(p["run_bytes"] / MIB, 1) for n, p in peaks.items()},
        "peak_abs_mib": {n: round(p["peak_bytes"] / MIB, 1) for n, p in peaks.items()},
        "peak_before_mib": {n: round(p["before_bytes"] / MIB, 1) for n, p in peaks.items()},
        "kv_peak_mib_engine": {n: round(p["kv_bytes_physical_peak"] / MIB, 1) for n, p in peaks.items()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
