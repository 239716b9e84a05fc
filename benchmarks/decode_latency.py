"""Decode time per token: full cache vs 10% kept, at 1k / 4k / 16k tokens of context.

Model: the small GPT with random weights, 4 layers, d_model 512, 8 query / 8 KV heads of dim 64,
byte vocabulary (256), fp32, batch 1: at long context its decode is bound by reading the KV cache.
For every (policy, context) the cache is first filled directly with what the policy would hold
after the prompt (random keys/values at the kept count, positions = sinks + the most recent
tokens, random H2O scores): prefill is not what is measured and would cost minutes here. Then
`--steps` real decode steps run through the engine (append, attention over the kept tokens,
the policy's eviction, compaction), each timed with `time.perf_counter` after a device sync; the
median is reported. Human table first; the LAST line is one JSON object.

    .venv/bin/python benchmarks/decode_latency.py [--contexts 1024,4096,16384] [--batches 1,4] [--steps 24]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from nats_model.engine.kv_engine import KVEngine
from nats_model.mask import GLOBAL
from nats_model.models.gpt import GPT, GPTConfig
from nats_model.policies import build
from nats_model.policies.nats import NatsPolicy


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fill_cache(engine: KVEngine, cfg: GPTConfig, context: int, kept: int, device: torch.device) -> None:
    """Put `kept` tokens per (layer, sequence, KV head) into the engine's cache as if `context`
    tokens of every sequence were seen."""
    g = torch.Generator(device="cpu").manual_seed(0)
    batch = engine.cache.batch
    n_seg, hd = batch * cfg.n_kv_head, cfg.head_dim
    n_sink = min(4, kept)
    pos = torch.cat([torch.arange(n_sink), torch.arange(context - (kept - n_sink), context)])
    for layer in range(cfg.n_layer):
        k = torch.randn(n_seg, kept, hd, generator=g).to(device) * 0.5
        v = torch.randn(n_seg, kept, hd, generator=g).to(device)
        store = engine.cache.layer(layer, k.view(batch, cfg.n_kv_head, kept, hd))
        store.append(k, v, pos.expand(n_seg, kept).to(device), torch.ones(n_seg, kept, dtype=torch.bool, device=device))
        for name in store.aux:
            if name == "nats_order":  # the prompt's kept tokens: Global (they stay until the cap evicts them)
                store.aux[name].copy_(NatsPolicy.order_key(torch.full_like(store.pos, GLOBAL), store.pos))
            else:
                store.aux[name].uniform_(0, 1)
    engine.cache.seen = torch.full((batch,), context, device=device)


class DecodeRun:
    """One (policy, context) cell: an engine whose cache is pre-filled, stepped one token at a time."""

    def __init__(self, model: GPT, policy_name: str, params: dict, context: int, device: torch.device,
                 batch: int = 1):
        cfg = model.config
        self.model, self.name, self.params, self.context, self.device = model, policy_name, params, context, device
        self.policy = build(policy_name, **params)
        if getattr(self.policy, "rope_theta", 0) is None:
            self.policy.rope_theta = cfg.rope_theta
        self.policy.bind_model(model)
        self.policy.reset()
        self.engine = KVEngine(self.policy, batch=batch)
        self.batch = batch
        has_budget = self.policy.budget is not None or self.policy.budget_tokens is not None
        kept0 = int(self.policy.budget_for(torch.tensor([context]))[0]) if has_budget else context
        fill_cache(self.engine, cfg, context, kept0, device)
        self.tok = torch.full((batch, 1), 65, device=device)
        self.pos = torch.full((batch,), context, device=device)
        self.wall, self.cpu, self.ratios = [], [], []

    @torch.no_grad()
    def step(self, record: bool) -> None:
        valid = torch.ones(self.batch, 1, dtype=torch.bool, device=self.device)
        rope = self.policy.rope_positions(self.pos[:, None], self.engine.kept_per_seq().to(self.device), valid)
        sync(self.device)
        c0 = time.thread_time()  # before t0: the call itself takes ~0.1 ms, outside the wall time
        t0 = time.perf_counter()
        self.engine.begin_step(self.pos[:, None], valid, prefill=False)
        logits, _ = self.model(self.tok, kv_engine=self.engine, positions=rope)
        self.tok = logits[:, -1].argmax(-1, keepdim=True)
        sync(self.device)
        if record:
            self.wall.append(time.perf_counter() - t0)
            self.cpu.append(time.thread_time() - c0)
        cache = self.engine.cache
        self.ratios.append(cache.kv_bytes_physical() / cache.kv_bytes_kept())
        self.pos = self.pos + 1

    def row(self) -> dict:
        cache = self.engine.cache
        return {"policy": self.name, "budget": self.params.get("budget", 1.0), "context": self.context,
                "kept_per_head": int(cache.layers[0].lens[0]), "ms_per_token": 1e3 * statistics.median(self.wall) / self.batch,
                "cpu_ms_per_token": 1e3 * statistics.median(self.cpu) / self.batch,
                "kv_mib_physical": cache.kv_bytes_physical() / 2**20, "kv_mib_full": cache.kv_bytes_full() / 2**20,
                "max_physical_over_kept": max(self.ratios)}


def model_for(model: GPT, policy_name: str) -> GPT:
    """The benchmark model, or for `nats` the same weights plus NAtS type scorers (randomly
    initialised: near-zero logits, so with the default Global bias new tokens are typed Global and
    the hard cap `budget` evicts one per step, the policy's most expensive steady state)."""
    if policy_name != "nats":
        return model
    cached = getattr(model, "_nats_twin", None)
    if cached is None:
        torch.manual_seed(1)
        cached = GPT(dataclasses.replace(model.config, attention="nats", window=64))
        cached.load_state_dict(model.state_dict(), strict=False)  # the scorers keep their init
        cached = cached.to(next(model.parameters()).device).eval()
        if not model.blocks[0].mlp.up.weight.is_contiguous():  # the same weight layout as `model`
            cached.cpu_decode_layout()
        model._nats_twin = cached
    return cached


def measure_context(model: GPT, runs: list, context: int, steps: int, warmup: int, device,
                    batch: int) -> list[dict]:
    """Steps the cells of one context round-robin, so load changes on a shared CPU hit all alike."""
    cells = [DecodeRun(model_for(model, name), name, params, context, device, batch) for name, params in runs]
    for i in range(warmup + steps):
        for cell in cells:
            cell.step(record=i >= warmup)
    return [cell.row() for cell in cells]


def print_table(rows: list[dict], batch: int, steps: int, device) -> None:
    print(f"\ndecode latency, GPT 4x512 (8 KV heads x 64), fp32, {device}, {torch.get_num_threads()} thread(s), "
          f"batch {batch}, median of {steps} steps (ms/token = step time / batch)")
    print(f"{'policy':<15}{'budget':>7}{'context':>9}{'kept/head':>10}{'ms/token':>10}{'cpu ms':>8}{'KV MiB':>9}"
          f"{'full MiB':>10}{'phys/kept':>10}")
    for r in rows:
        print(f"{r['policy']:<15}{r['budget']:>7g}{r['context']:>9}{r['kept_per_head']:>10}{r['ms_per_token']:>10.2f}"
              f"{r['cpu_ms_per_token']:>8.2f}{r['kv_mib_physical']:>9.2f}{r['kv_mib_full']:>10.2f}"
              f"{r['max_physical_over_kept']:>10.4f}")


def ratios(rows: list[dict], names: list[str], context: int, key: str) -> dict[str, float]:
    t = {(r["policy"], r["context"]): r[key] for r in rows}
    return {n: round(t[(n, context)] / t[("full", context)], 4) for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="1024,4096,16384")
    ap.add_argument("--policies", default="streaming_llm,h2o,snapkv,tova,nats",
                    help="policies run at --budget (nats: as its hard cap, on the same weights with NAtS scorers)")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batches", default="1,4",
                    help="batch sizes, comma-separated; the first gives the headline ratio")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on this shared 2-core CPU a second thread measured 3-5x slower)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--row-major-weights", action="store_true",
                    help="keep the Linear weights row-major (what load_model did before GPT.cpu_decode_layout)")
    ap.add_argument("--quick", action="store_true",
                    help="make bench QUICK=1: batch 1 only, 8 steps after 2 warm-up (same contexts and policies)")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.steps, args.warmup = "1", 8, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, n_layer=4, n_head=8, n_kv_head=8, d_model=512, max_seq_len=32768)
    model = GPT(cfg).to(device).eval()
    if not args.row_major_weights:
        model.cpu_decode_layout()  # as services.models.load_model does for every GPT on the CPU
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    names = [p for p in args.policies.split(",") if p]
    runs = [("full", {})] + [(p, {"budget": args.budget}) for p in names]
    longest, pct = max(contexts), round(args.budget * 100)
    t_start = time.perf_counter()
    summary: dict = {"benchmark": "decode_latency", "device": str(device), "threads": torch.get_num_threads(),
                     "contexts": contexts, "budget": args.budget, "steps": args.steps, "batches": batches,
                     "weights": "row-major" if args.row_major_weights else "cpu_decode_layout"}
    all_rows = []
    for i, batch in enumerate(batches):
        rows = [r for ctx in contexts
                for r in measure_context(model, runs, ctx, args.steps, args.warmup, device, batch)]
        all_rows += rows
        print_table(rows, batch, args.steps, device)
        wall = ratios(rows, names, longest, "ms_per_token")
        suffix = "" if i == 0 else f"_batch{batch}"
        summary[f"ratio_{pct}pct_vs_full_{longest // 1024}k{suffix}"] = max(wall.values(), default=None)
        summary[f"ratio_per_policy{suffix}"] = wall
        summary[f"ratio_per_policy_cpu_time{suffix}"] = ratios(rows, names, longest, "cpu_ms_per_token")
        summary[f"ms_per_token{suffix}"] = {f"{r['policy']}@{r['context']}": round(r["ms_per_token"], 3) for r in rows}
    summary["max_physical_over_kept"] = round(max(r["max_physical_over_kept"] for r in all_rows), 5)
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
