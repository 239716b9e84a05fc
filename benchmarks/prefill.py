"""Prefill: time to first token (TTFT) and peak memory of every policy vs transformers' own forward.

Model: a random Hugging Face Llama (4 layers, hidden 512, 8 query / 8 KV heads of dim 64,
intermediate 1376, vocabulary 1024, fp32; the same seed for every run), one random prompt of
each length, batch 1. Per context:

- `hf`: transformers' own forward, `attn_implementation="sdpa"`, `logits_to_keep=1` (the
  reference a researcher would compare with);
- every policy: `nats_model.engine.generation.generate(..., max_new_tokens=1, prefill_chunk_size=512)`
  through the natsbench engine (its `ttft_s`: prefill plus picking the first token); evicting
  policies at `--budget` of the prompt.

`full_ttft_over_hf_<k>k` comes from one process per context that times hf and full alternately,
`--repeats` times each (best of each), so that a change in the machine's load hits both. Then every
(policy, context) runs once more in a fresh subprocess (torch threads fixed, `--threads`, default 1),
so its memory peak is its own: the process's peak RSS (`VmHWM`; CUDA: `max_memory_allocated`), and
the RSS growth during the timed prefill (peak after resetting the high-water mark, minus the RSS
before); its one timed run is the `ttft_s` of the table. A short warm-up prefill runs first.
Human table first; the LAST line is one JSON object with `full_ttft_over_hf_<k>k`,
`max_prefill_peak_over_full` (H2O / TOVA / SnapKV peak RSS over `full`'s, at the longest context),
`max_prefill_growth_over_full` (the same for the RSS growth during prefill), and the tables
`side_by_side_ttft_s`, `ttft_s`, `peak_rss_bytes`, `prefill_rss_growth_bytes` (`"policy@context"`).
Run it under the shared lock: `flock /tmp/natsbench-heavy.lock .venv/bin/python benchmarks/prefill.py`.

    .venv/bin/python benchmarks/prefill.py [--quick] [--contexts 8192,16384] [--policies full,h2o,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"vocab_size": 1024, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
         "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 65536}
POLICIES = ("full", "streaming_llm", "h2o", "tova", "snapkv")
OBSERVING = ("h2o", "tova", "snapkv")  # the policies whose memory target is checked
WARMUP_TOKENS = 256


def _rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so the next peak is the prefill's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**MODEL, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval().to(device)


def prompt_ids(length: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(length)
    return torch.randint(0, MODEL["vocab_size"], (1, length), generator=g).to(device)


def _ttft(model, policy_name: str, x: torch.Tensor, budget: float, chunk: int) -> float:
    """Seconds from prompt in to first token out: transformers' forward ("hf") or natsbench's generate."""
    from nats_model.engine.generation import generate
    from nats_model.policies import build

    if policy_name == "hf":
        _sync(x.device)
        t0 = time.perf_counter()
        model(input_ids=x, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1)
        _sync(x.device)
        return time.perf_counter() - t0
    params = {} if policy_name == "full" else {"budget": budget}
    return generate(model, x, build(policy_name, **params), 1, prefill_chunk_size=chunk).ttft_s


@torch.no_grad()
def run_pair(context: int, chunk: int, repeats: int, device: torch.device) -> dict:
    """hf and full alternately in this process, `repeats` times each: their best TTFTs, measured side
    by side so that a change in the machine's load hits both."""
    model = build_model(device)
    ids = prompt_ids(context, device)
    for name in ("hf", "full"):
        _ttft(model, name, prompt_ids(WARMUP_TOKENS, device), 1.0, chunk)
    times: dict[str, list[float]] = {"hf": [], "full": []}
    for _ in range(repeats):
        for name in ("hf", "full"):
            times[name].append(_ttft(model, name, ids, 1.0, chunk))
    return {"context": context, "hf_ttft_s": min(times["hf"]), "full_ttft_s": min(times["full"]), "times": times}


@torch.no_grad()
def run_cell(policy_name: str, context: int, budget: float, chunk: int, repeats: int, device: torch.device) -> dict:
    """One (policy or "hf", context) in this process: best TTFT of `repeats`, memory peaks."""
    model = build_model(device)
    ids = prompt_ids(context, device)

    def once(x: torch.Tensor) -> float:
        return _ttft(model, policy_name, x, budget, chunk)

    once(prompt_ids(WARMUP_TOKENS, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _rss_bytes("VmRSS")
    _reset_peak_rss()
    times = [once(ids) for _ in range(repeats)]
    peak_prefill = _rss_bytes("VmHWM")
    return {"policy": policy_name, "context": context, "ttft_s": min(times),
            "peak_rss_bytes": max(peak_prefill, before), "prefill_rss_growth_bytes": max(0, peak_prefill - before),
            "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def spawn(policy_name: str, context: int, args: argparse.Namespace, repeats: int) -> dict:
    """Run one cell (or the hf/full "pair") in a fresh interpreter (a clean memory peak); returns its JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", f"{policy_name}@{context}",
           "--budget", str(args.budget), "--chunk", str(args.chunk), "--repeats", str(repeats),
           "--threads", str(args.threads), "--device", args.device]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"cell {policy_name}@{context} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ctx_label(ctx: int) -> str:
    """8192 -> "8k"; a context that is not a whole number of k keeps its digits."""
    return f"{ctx // 1024}k" if ctx % 1024 == 0 else str(ctx)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8k only, 2 hf/full pairs (about 3 minutes on 1 thread)")
    p.add_argument("--contexts", default="8192,16384")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--budget", type=float, default=0.1, help="kept fraction of the evicting policies")
    p.add_argument("--chunk", type=int, default=512, help="natsbench prefill chunk (tokens)")
    p.add_argument("--repeats", type=int, default=3, help="hf/full pairs timed side by side per context")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: run one cell, print its JSON
    args = p.parse_args(argv)
    try:
        args.context_list = [int(c) for c in args.contexts.split(",") if c]
    except ValueError:
        p.error(f"--contexts must be comma-separated ints, got {args.contexts!r}")
    args.policy_list = [x for x in args.policies.split(",") if x]
    bad = [x for x in args.policy_list if x not in POLICIES]
    if bad:
        p.error(f"--policies: unknown {bad}; allowed: {', '.join(POLICIES)}")
    if not args.context_list or min(args.context_list) <= WARMUP_TOKENS:
        p.error(f"--contexts must be ints > {WARMUP_TOKENS}, got {args.contexts!r}")
    if not 0 < args.budget <= 1:
        p.error(f"--budget must be in (0, 1], got {args.budget}")
    for name in ("chunk", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available (allowed: cpu, cuda)")
    if args.quick:
        args.context_list, args.repeats = [8192], 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.cell:
        name, ctx = args.cell.split("@")
        if name == "pair":
            print(json.dumps(run_pair(int(ctx), args.chunk, args.repeats, device)))
        else:
            print(json.dumps(run_cell(name, int(ctx), args.budget, args.chunk, args.repeats, device)))
        return 0
    rows: dict[tuple[str, int], dict] = {}
    pairs: dict[int, dict] = {}
    for ctx in args.context_list:
        if "full" in args.policy_list:
            pairs[ctx] = spawn("pair", ctx, args, args.repeats)
        for name in ["hf", *args.policy_list]:  # one timed run each: the memory peak is what these are for
            rows[(name, ctx)] = spawn(name, ctx, args, 1)
    mib = 2 ** 20
    print(f"prefill, batch 1, random Llama 4x512 (8 heads), {args.device}, {args.threads} thread(s), "
          f"chunk {args.chunk}, evicting policies at {args.budget:g} kept")
    for ctx, pair in pairs.items():
        print(f"side by side at {ctx}: hf {pair['hf_ttft_s']:.2f} s, full {pair['full_ttft_s']:.2f} s "
              f"(best of {args.repeats}): full / hf = {pair['full_ttft_s'] / pair['hf_ttft_s']:.3f}")
    print("one fresh process per cell (TTFT of one run there; memory):")
    print(f"{'policy':<14}{'context':>8}{'TTFT s':>10}{'/ hf':>8}{'peak RSS MiB':>14}{'/ full':>8}{'prefill +MiB':>14}")
    for (name, ctx), r in rows.items():
        hf, full = rows[("hf", ctx)], rows.get(("full", ctx))
        over_full = f"{r['peak_rss_bytes'] / full['peak_rss_bytes']:.2f}" if full else "-"
        print(f"{name:<14}{ctx:>8}{r['ttft_s']:>10.2f}{r['ttft_s'] / hf['ttft_s']:>8.2f}"
              f"{r['peak_rss_bytes'] / mib:>14.0f}{over_full:>8}{r['prefill_rss_growth_bytes'] / mib:>14.0f}")
    summary: dict = {"device": args.device, "threads": args.threads, "chunk": args.chunk, "budget": args.budget,
                     "quick": args.quick}
    if "full" in args.policy_list:
        for ctx in args.context_list:
            summary[f"full_ttft_over_hf_{_ctx_label(ctx)}"] = round(pairs[ctx]["full_ttft_s"]
                                                                 / pairs[ctx]["hf_ttft_s"], 3)
        top = max(args.context_list)
        observing = [n for n in OBSERVING if n in args.policy_list]
        full = rows[("full", top)]
        if observing:
            summary["max_prefill_peak_over_full"] = round(max(rows[(n, top)]["peak_rss_bytes"] for n in observing)
                                                          / full["peak_rss_bytes"], 3)
            summary["max_prefill_growth_over_full"] = round(
                max(rows[(n, top)]["prefill_rss_growth_bytes"] for n in observing)
                / max(full["prefill_rss_growth_bytes"], 1), 3)
            summary["peak_context"] = top
        if args.device == "cuda":
            summary["max_cuda_allocated_over_full"] = round(
                max(rows[(n, top)]["cuda_max_allocated_bytes"] for n in observing or ["full"])
                / full["cuda_max_allocated_bytes"], 3)
    for key in ("ttft_s", "peak_rss_bytes", "prefill_rss_growth_bytes"):
        summary[key] = {f"{n}@{c}": (round(r[key], 3) if key == "ttft_s" else r[key]) for (n, c), r in rows.items()}
    summary["side_by_side_ttft_s"] = {f"{n}@{c}": round(p[f"{n}_ttft_s"], 3) for c, p in pairs.items()
                                      for n in ("hf", "full")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
