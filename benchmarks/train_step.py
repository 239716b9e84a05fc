"""NAtS training step vs the same model with full attention, at 1024 and 4096 tokens, + peak memory.

Model: the small GPT of `natsbench train` (3 layers, d_model 128, 4 query / 4 KV heads of dim
32, byte vocabulary, fp32, random weights), once with full causal attention (SDPA) and once with
NAtS attention (window 64, lambda 1e-5, straight-through Gumbel types from its scorers; on the
CPU `nats_model.attention.nats_attention` runs the block-wise Function). One train step =
forward, cross-entropy, backward, gradient clipping, AdamW step, on random bytes. Every cell has
the same number of batch tokens (default 8192: 8 x 1024 and 2 x 4096). Full and NAtS steps run
alternately in one process after warm-up; the median step time of each is reported and the
ratio NAtS / full is the headline (`nats_over_full_step_1024`). `--reference` adds the dense
reference Function at 1024 tokens (the path every CPU run took before).

Peak memory: each (attention, length) cell also runs in a fresh subprocess that builds the model
and optimizer, takes one step to allocate the optimizer state, reads its resident set size
(RSS), resets the peak RSS (`/proc/self/clear_refs`), runs one more step and reports the peak
RSS (VmHWM) minus that baseline: the
memory one step needs on top of the model (activations, attention tiles, gradients). Large
tensors are mmap-ed by the allocator (the subprocess fixes glibc's mmap threshold at 128 KiB) and
returned on free, so RSS follows live memory. At a
fixed number of batch tokens, memory linear in N stays flat from 1024 to 4096 tokens, while an
N x N tensor per (batch, head) grows 4x.

    .venv/bin/python benchmarks/train_step.py [--lengths 1024,4096] [--tokens 8192] [--steps 5] [--quick]

Human table first; the LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from nats_model.models.gpt import GPT, GPTConfig

KINDS = ("full", "nats", "reference")


def make_model(kind: str, seed: int = 0) -> tuple[GPT, torch.optim.Optimizer]:
    """The benchmark GPT with `kind` attention ("reference": NAtS through the dense reference)."""
    torch.manual_seed(seed)
    attention = "full" if kind == "full" else "nats"
    cfg = GPTConfig(vocab_size=256, n_layer=3, n_head=4, n_kv_head=4, d_model=128, max_seq_len=8192,
                    attention=attention, window=64, lam=1e-5)
    model = GPT(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    return model, opt


class Step:
    """One train step of a model on a fixed random batch (B, N) of bytes."""

    def __init__(self, kind: str, batch: int, length: int):
        self.kind = kind
        self.model, self.opt = make_model(kind)
        g = torch.Generator().manual_seed(1)
        data = torch.randint(0, 256, (batch, length + 1), generator=g)
        self.inputs, self.targets = data[:, :-1], data[:, 1:]

    def __call__(self) -> float:
        t0 = time.perf_counter()
        if self.kind == "reference":
            import nats_model.attention as attn

            orig = attn.nats_attention
            attn.nats_attention = attn.nats_attention_reference  # what gpt.py calls, for this step
            try:
                self._step()
            finally:
                attn.nats_attention = orig
        else:
            self._step()
        return time.perf_counter() - t0

    def _step(self) -> None:
        _, loss = self.model(self.inputs, self.targets)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_cell(kind: str, batch: int, length: int) -> dict:
    """In this (fresh) process: peak RSS of one step over the RSS after a first step."""
    step = Step(kind, batch, length)
    step()  # allocates the optimizer state and the allocator's pools
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak RSS (VmHWM) to the current RSS
        f.write("5")
    step()
    peak = _status_kib("VmHWM")
    return {"kind": kind, "batch": batch, "length": length, "peak_mib": round(max(peak - base, 0) / 1024, 1)}


def measure_memory(kind: str, batch: int, length: int, threads: int) -> float:
    """Peak step memory (MiB over the post-warm-up RSS) of one cell, in a subprocess."""
    cmd = [sys.executable, __file__, "--memory-cell", f"{kind},{batch},{length}", "--threads", str(threads)]
    # a fixed mmap threshold: glibc would otherwise raise it after the first large free and keep
    # later tensors on its heap, so RSS would stop following live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def measure_times(kinds: list[str], batch: int, length: int, steps: int, warmup: int) -> dict[str, float]:
    """Median step seconds per kind; the kinds' steps alternate so machine load hits all alike."""
    cells = {k: Step(k, batch, length) for k in kinds}
    for _ in range(warmup):
        for c in cells.values():
            c()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(steps):
        for k, c in cells.items():
            times[k].append(c())
    return {k: statistics.median(v) for k, v in times.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="1024,4096", help="sequence lengths, comma-separated")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per batch (batch = tokens // length)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per kind and length")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the 2-core machine: 2)")
    ap.add_argument("--reference", action="store_true",
                    help="also time the dense reference Function at the first length (slow: ~6 s a step)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--quick", action="store_true", help="3 timed steps after 1 warm-up (<= 3 minutes)")
    ap.add_argument("--memory-cell", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        args.length_list = [int(x) for x in args.lengths.split(",") if x]
    except ValueError:
        ap.error(f"--lengths must be comma-separated integers, got {args.lengths!r}")
    if not args.length_list or min(args.length_list) < 2:
        ap.error(f"--lengths must list integers >= 2, got {args.lengths!r}")
    bad = [n for n in args.length_list if args.tokens < n]
    if bad:
        ap.error(f"--tokens ({args.tokens}) must be at least every length, got lengths {bad}")
    for name in ("steps", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.quick:
        args.steps, args.warmup = 3, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_cell:
        kind, batch, length = args.memory_cell.split(",")
        print(json.dumps(memory_cell(kind, int(batch), int(length))))
        return
    t_start = time.perf_counter()
    rows = []
    for i, length in enumerate(args.length_list):
        batch = args.tokens // length
        kinds = ["full", "nats"] + (["reference"] if args.reference and i == 0 else [])
        times = measure_times(kinds, batch, length, args.steps, args.warmup)
        for kind in kinds:
            mem = None
            if not args.no_memory:
                mem = measure_memory(kind, batch, length, args.threads)
            rows.append({"kind": kind, "length": length, "batch": batch, "step_s": times[kind], "peak_mib": mem})
    print(f"train step, 3-layer GPT d=128, {args.tokens} tokens a batch, {args.threads} threads, "
          f"median of {args.steps} steps")
    print(f"{'attention':<10} {'tokens':>7} {'batch':>6} {'step s':>8} {'/ full':>7} {'peak MiB':>9}")
    step = {(r["kind"], r["length"]): r["step_s"] for r in rows}
    for r in rows:
        mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        print(f"{r['kind']:<10} {r['length']:>7} {r['batch']:>6} {r['step_s']:>8.3f} "
              f"{r['step_s'] / step[('full', r['length'])]:>7.2f} {mem:>9}")
    summary: dict = {"benchmark": "train_step", "threads": args.threads, "tokens_per_batch": args.tokens,
                     "steps": args.steps, "lengths": args.length_list}
    for length in args.length_list:
        summary[f"nats_over_full_step_{length}"] = round(step[("nats", length)] / step[("full", length)], 3)
    if args.reference:
        first = args.length_list[0]
        summary[f"reference_over_full_step_{first}"] = round(step[("reference", first)] / step[("full", first)], 3)
    summary["step_s"] = {f"{r['kind']}@{r['length']}": round(r["step_s"], 4) for r in rows}
    if not args.no_memory:
        summary["peak_mib"] = {f"{r['kind']}@{r['length']}": r["peak_mib"] for r in rows if r["peak_mib"] is not None}
        lo, hi = args.length_list[0], args.length_list[-1]
        if hi != lo:
            for kind in ("full", "nats"):
                p_lo, p_hi = summary["peak_mib"][f"{kind}@{lo}"], summary["peak_mib"][f"{kind}@{hi}"]
                summary[f"{kind}_peak_{hi}_over_{lo}"] = round(p_hi / p_lo, 3) if p_lo else None
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
