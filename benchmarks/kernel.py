"""NAtS attention kernels: dense reference vs Triton vs SDPA full causal attention, forward and backward.

    .venv/bin/python benchmarks/kernel.py [--sizes 1024,2048,4096,8192,16384] [--heads 8 --kv-heads 2]

Times, per sequence length N: forward (no autograd graph) and forward + backward (dq, dk, dv and,
for the NAtS implementations, the type gradient), in milliseconds (median of --repeats after a
warm-up), plus peak CUDA memory. Types are random with the mix --mix (Global, Local, SW), first and
last position Global. Triton runs only on CUDA: without a GPU its column reads "skipped: no GPU"
(the interpreter is no benchmark), and the reference / SDPA are timed on the CPU only up to
--cpu-max-n (larger N: "skipped: cpu"). Prints a table, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

IMPLS = ("reference", "triton", "sdpa")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(n: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    b, hq, hkv, hd = args.batch, args.heads, args.kv_heads, args.head_dim
    q, k, v, d_out = (torch.randn(b, h, n, hd, generator=gen).to(device, dtype) for h in (hq, hkv, hkv, hq))
    mix = torch.tensor([float(x) for x in args.mix.split(",")])
    types = torch.multinomial(mix / mix.sum(), b * hkv * n, replacement=True, generator=gen).view(b, hkv, n)
    types[..., 0] = 0
    types[..., -1] = 0
    onehot = torch.nn.functional.one_hot(types, 3).to(device, torch.float32)
    return q, k, v, d_out, onehot


def _call(impl: str, q, k, v, onehot, window: int):
    if impl == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if impl == "reference":
        from nats_model.attention import nats_attention_reference

        return nats_attention_reference(q, k, v, onehot, window=window)
    from nats_model.kernels import nats_attention_triton

    return nats_attention_triton(q, k, v, onehot, window=window)


def _time_ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (and Triton compilation)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(impl: str, n: int, args, device: torch.device, dtype: torch.dtype) -> dict:
    """One cell of the table: fwd_ms, fwd_bwd_ms, peak_bytes (CUDA) or a status saying why not."""
    row = {"impl": impl, "n": n, "fwd_ms": None, "fwd_bwd_ms": None, "peak_bytes": None}
    if impl == "triton" and device.type != "cuda":
        return {**row, "status": "skipped: no GPU"}
    if device.type != "cuda" and n > args.cpu_max_n:
        return {**row, "status": f"skipped: cpu, N > {args.cpu_max_n}"}
    q, k, v, d_out, onehot = _inputs(n, args, device, dtype, seed=n)
    leaves = [x.requires_grad_(True) for x in (q, k, v)] + ([onehot.requires_grad_(True)] if impl != "sdpa" else [])

    def fwd():
        with torch.no_grad():
            _call(impl, q, k, v, onehot, args.window)

    def fwd_bwd():
        torch.autograd.grad(_call(impl, q, k, v, onehot, args.window), leaves, d_out)

    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        row["fwd_ms"] = _time_ms(fwd, device, args.repeats)
        row["fwd_bwd_ms"] = _time_ms(fwd_bwd, device, args.repeats)
        if device.type == "cuda":
            row["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        return {**row, "status": "ok"}
    except torch.OutOfMemoryError:
        return {**row, "status": "oom"}


def _fmt(x: float | None) -> str:
    return f"{x:10.2f}" if x is not None else f"{'-':>10}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,4096,8192,16384", help="comma-separated sequence lengths")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8, help="query heads")
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--mix", default="0.1,0.2,0.7", help="probabilities of Global, Local, SW types")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="default bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-max-n", type=int, default=2048, help="largest N timed on the CPU")
    ap.add_argument("--impls", default=",".join(IMPLS), help=f"subset of {IMPLS}")
    ap.add_argument("--quick", action="store_true", help="make bench QUICK=1: sizes 1024,2048, 2 repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = "1024,2048", 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    sizes = [int(s) for s in args.sizes.split(",")]
    impls = [i for i in args.impls.split(",") if i]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"--impls: unknown {bad}, allowed {IMPLS}")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"NAtS attention kernels on {name}, {dtype}, B={args.batch} Hq={args.heads} Hkv={args.kv_heads} "
          f"hd={args.head_dim} W={args.window} mix(G,L,S)={args.mix}; median of {args.repeats} runs, ms")
    print(f"{'N':>7} {'impl':>10} {'fwd':>10} {'fwd+bwd':>10} {'peak MiB':>10}  status")
    results = []
    for n in sizes:
        for impl in impls:
            row = measure(impl, n, args, device, dtype)
            results.append(row)
            peak = f"{row['peak_bytes'] / 2**20:10.1f}" if row["peak_bytes"] else f"{'-':>10}"
            print(f"{n:>7} {impl:>10} {_fmt(row['fwd_ms'])} {_fmt(row['fwd_bwd_ms'])} {peak}  {row['status']}",
                  flush=True)
    flops = {n: 4 * args.batch * args.heads * n * n * args.head_dim / 2 for n in sizes}  # causal fwd matmuls
    summary = {
        "benchmark": "kernel",
        "device": name,
        "dtype": str(dtype).removeprefix("torch."),
        "config": {k: getattr(args, k) for k in ("batch", "heads", "kv_heads", "head_dim", "window", "mix",
                                                  "repeats", "cpu_max_n")},
        "causal_fwd_gflop": {str(n): round(f / 1e9, 3) for n, f in flops.items()},
        "results": [{**r, "fwd_ms": r["fwd_ms"] and round(r["fwd_ms"], 3),
                     "fwd_bwd_ms": r["fwd_bwd_ms"] and round(r["fwd_bwd_ms"], 3)} for r in results],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
