"""Compile the NAtS kernels for a CUDA architecture without a GPU (Triton front end, LLVM, ptxas).

    TRITON_INTERPRET= .venv/bin/python -m nats_model.kernels.aot_check [--arch 90] [--dtype bf16]
        [--head-dim 64] [--block 64] [--all-variants]

The interpreter used by the CPU tests is more permissive than the compiler (it accepts
non-constexpr globals, loose loop-carried types); compiling ahead of time catches those errors
and reports each kernel's shared memory. It does not run anything: numbers on a real GPU are a
separate check. Needs TRITON_INTERPRET unset (the decorators must build compilable kernels).
Prints one JSON object per line, the last one a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time

DTYPES = ("fp32", "fp16", "bf16")


def _signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    io = {"Q", "K", "V", "OUT", "DO"}
    f32 = {"LSE", "LSE_FULL", "LSE_T", "DELTA", "DK", "DV", "COLS", "DQ", "ROW"}
    i32 = {"TYPES", "LOC_END", "LOC_END2", "SW_END", "STRICT_START", "VISITED"}
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in io:
            sig[name] = f"*{dtype}"
        elif name in f32:
            sig[name] = "*fp32"
        elif name == "SKIP":
            sig[name] = "*i8"
        elif name in i32:
            sig[name] = "*i32"
        elif name == "scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_kernels(arch: int = 90, dtype: str = "bf16", head_dim: int = 64, block: int = 64,
                    all_variants: bool = False) -> list[dict]:
    """Compile forward (training, prefill), dK/dV and dQ kernels; one dict per kernel compiled."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("aot_check needs TRITON_INTERPRET unset: the interpreter's kernels cannot be compiled")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from nats_model.kernels import nats_attn_bwd, nats_attn_fwd

    target = GPUTarget("cuda", arch, 32)
    common = dict(BLOCK_M=block, BLOCK_N=block, BLOCK_D=nats_attn_fwd.pow2_head_dim(head_dim),
                  IEEE=dtype == "fp32", UPCAST=False)
    jobs = [(nats_attn_fwd.nats_fwd_kernel, {"FULL_LSE": True, "USE_SKIP": False}),
            (nats_attn_fwd.nats_fwd_kernel, {"FULL_LSE": False, "USE_SKIP": True})]
    bwd_flags = [(False, True), (True, True), (False, False)] if all_variants else [(False, True)]
    for clamp, type_grad in bwd_flags:
        for fn in (nats_attn_bwd.nats_bwd_dkdv_kernel, nats_attn_bwd.nats_bwd_dq_kernel):
            jobs.append((fn, {"CLAMP": clamp, "TYPE_GRAD": type_grad}))
    done = []
    for fn, flags in jobs:
        constexprs = {**common, **flags}
        t0 = time.perf_counter()
        src = ASTSource(fn, _signature(fn, dtype, constexprs), constexprs)
        kernel = triton.compile(src, target=target, options={"num_warps": 4, "num_stages": 2})
        done.append({"kernel": fn.__name__, "flags": flags, "arch": arch, "dtype": dtype, "head_dim": head_dim,
                     "block": block, "shared_bytes": kernel.metadata.shared,
                     "compile_s": round(time.perf_counter() - t0, 2)})
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="compile the NAtS Triton kernels for a CUDA arch, no GPU needed")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--all-variants", action="store_true")
    args = ap.parse_args(argv)
    rows = compile_kernels(args.arch, args.dtype, args.head_dim, args.block, args.all_variants)
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"compiled": len(rows), "max_shared_bytes": max(r["shared_bytes"] for r in rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
