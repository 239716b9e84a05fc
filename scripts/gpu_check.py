"""The GPU check of issue #12 (run by scripts/gpu_check.sh; at most ~8 minutes on one GPU).

1. triton: NAtS attention forward + backward on the Triton kernels against the dense reference
   autograd Function, 4096 tokens, bf16 inputs (reference in fp32 on the same rounded inputs),
   W = 256, lambda 3e-7, GQA 8 query / 2 KV heads of dim 64; max |error| / max |reference| per tensor
   (out, dq, dk, dv, type gradients) must stay under 3e-2 (the bf16 tolerance of the CPU tests).
2. finetune: `natsbench finetune --model` on a tiny random Llama (saved to a temp folder with a
   byte-level BPE tokenizer) for 30 steps on CUDA; the student's NAtS attention runs on the
   Triton kernels there. Must finish and write an adapter folder.
3. decode_kernel: the Triton variable-length decode kernel (`nats_model.kernels.decode`) against the
   engine's torch path `attend_store` on one layer's store at 16384 tokens seen with 10% kept on
   average, a different count per KV head (5%..15%), batch 4, 8 KV heads x 4 query heads, head dim
   128, bf16; max |error| / max |fp32 reference| under 3e-2, and ms per call of both (median of 50).
4. eval: `natsbench eval --model BASE --adapter DIR --policy nats --device cuda` on passkey@1024;
   must finish with status done (accuracy of random weights is not the point).

Human lines go to stderr; the LAST stdout line is one JSON object with every figure. Without a
CUDA device it prints `{"gpu_check": "skipped", "error": "no CUDA device", ...}` and exits 1
before doing anything else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.declaration import DONE

REPO = Path(__file__).resolve().parents[1]
TOL = 3e-2


def log(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


def check_triton(device: str, n: int = 4096) -> dict:
    import torch

    from nats_model.attention import nats_attention_reference
    from nats_model.kernels import nats_attention_triton

    hq, hkv, hd, window, lam = 8, 2, 64, 256, 3e-7

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    g = torch.Generator().manual_seed(0)
    q, d_out = torch.randn(1, hq, n, hd, generator=g), torch.randn(1, hq, n, hd, generator=g)
    k, v = torch.randn(1, hkv, n, hd, generator=g), torch.randn(1, hkv, n, hd, generator=g)
    types = torch.randint(0, 3, (1, hkv, n), generator=g)
    types[..., 0] = types[..., -1] = 0  # training: first and last Global
    onehot = torch.nn.functional.one_hot(types, 3).float().to(device)
    q, k, v, d_out = (x.to(device, torch.bfloat16) for x in (q, k, v, d_out))

    def run(fn, dtype):
        leaves = [x.detach().to(dtype).clone().requires_grad_(True) for x in (q, k, v)]
        oh = onehot.detach().clone().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        out = fn(*leaves, oh, window=window, lam=lam)
        grads = torch.autograd.grad(out, [*leaves, oh], d_out.to(dtype))
        sync()
        return (out, *grads), time.perf_counter() - t0

    run(nats_attention_triton, torch.bfloat16)  # compile / autotune outside the timing
    got, t_triton = run(nats_attention_triton, torch.bfloat16)
    want, t_ref = run(nats_attention_reference, torch.float32)
    errors = {}
    for name, a, b in zip(("out", "dq", "dk", "dv", "d_types"), got, want, strict=True):
        errors[name] = float((a.detach().float() - b.detach()).abs().max() / b.detach().abs().max().clamp_min(1e-12))
    ok = all(e < TOL for e in errors.values())
    log(f"triton fwd+bwd at {n} tokens bf16: rel. errors {errors} ({'ok' if ok else 'FAIL'}), "
        f"{t_triton * 1e3:.1f} ms vs reference {t_ref * 1e3:.1f} ms")
    return {"ok": ok, "tokens": n, "rel_errors": errors, "tolerance": TOL, "triton_ms": round(t_triton * 1e3, 2),
            "reference_ms": round(t_ref * 1e3, 2)}


def check_decode_kernel(device: str, seen: int = 16384, batch: int = 4, hkv: int = 8, g: int = 4, hd: int = 128,
                        dtype_name: str = "bfloat16", reps: int = 50) -> dict:
    import torch

    from nats_model.engine.cache import LayerStore
    from nats_model.engine.kv_engine import attend_store
    from nats_model.kernels.decode import varlen_decode_attention

    dtype = getattr(torch, dtype_name)
    dev = torch.device(device)
    n_seg = batch * hkv
    gen = torch.Generator().manual_seed(0)
    counts = (torch.rand(n_seg, generator=gen) * 0.10 + 0.05).mul(seen).long().clamp(min=1)  # 5%..15% kept
    T = int(counts.max())
    valid = torch.arange(T)[None, :] >= (T - counts)[:, None]
    # kept positions: a sorted random subset of the `seen` positions per segment (left-aligned in the step)
    pos = torch.sort(torch.rand(n_seg, T, generator=gen) * (seen - 1), 1).values.long()
    store = LayerStore(n_seg, hd, dtype, dev)
    store.append(torch.randn(n_seg, T, hd, generator=gen).to(dev, dtype), torch.randn(n_seg, T, hd, generator=gen).to(dev, dtype),
                 pos.to(dev), valid.to(dev))
    q_pos = torch.full((n_seg, 1), seen, dtype=torch.long, device=dev)
    ones = torch.ones(n_seg, 1, dtype=torch.bool, device=dev)
    store.append(torch.randn(n_seg, 1, hd, generator=gen).to(dev, dtype), torch.randn(n_seg, 1, hd, generator=gen).to(dev, dtype),
                 q_pos, ones, True)
    q = torch.randn(n_seg, g, 1, hd, generator=gen).to(dev, dtype)
    scale = hd ** -0.5

    def torch_path():
        return attend_store(store, q, q_pos, ones, True, scale, None, "none", decode=True)[0]

    def kernel_path():
        return varlen_decode_attention(q.view(n_seg, g, hd), store.k, store.v, store.pos, store.offsets, store.lens,
                                       q_pos[:, 0], scale, max_len=store.row_cap)[0].view(n_seg, g, 1, hd)

    def timed(fn) -> float:
        fn()  # compile / warm up
        times = []
        for _ in range(reps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1e3

    got, want = kernel_path(), torch_path()
    ref_store = LayerStore(n_seg, hd, torch.float32, dev)
    ref_store.__dict__.update({k: v for k, v in store.__dict__.items() if k not in ("k", "v", "dtype")})
    ref_store.k, ref_store.v = store.k.float(), store.v.float()
    ref = attend_store(ref_store, q.float(), q_pos, ones, True, scale, None, "none", decode=True)[0]
    err_kernel = float((got.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    err_torch = float((want.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    t_kernel, t_torch = timed(kernel_path), timed(torch_path)
    ok = err_kernel < TOL
    log(f"decode kernel at {seen} seen, kept {int(counts.min())}..{int(counts.max())} per head ({dtype_name}): "
        f"rel. error {err_kernel:.2e} (torch path {err_torch:.2e}) ({'ok' if ok else 'FAIL'}), "
        f"{t_kernel:.3f} ms vs torch {t_torch:.3f} ms")
    return {"ok": ok, "seen": seen, "kept_mean": round(float(counts.float().mean()), 1), "n_seg": n_seg, "g": g,
            "head_dim": hd, "dtype": dtype_name, "rel_error": err_kernel, "torch_rel_error": err_torch,
            "tolerance": TOL, "kernel_ms": round(t_kernel, 4), "torch_ms": round(t_torch, 4),
            "torch_over_kernel": round(t_torch / max(t_kernel, 1e-9), 2)}


def _cli(*args: str, timeout: int) -> tuple[int, dict | None, str, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    seconds = time.perf_counter() - t0
    lines = out.stdout.strip().splitlines()
    try:
        last = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        last = None
    return out.returncode, last, out.stderr[-1500:], seconds


def make_base(folder: Path) -> Path:
    """A tiny random Llama (4 layers, hidden 256, 8 / 2 heads) with a byte-level BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.models import _tiny_bpe_tokenizer

    tok = _tiny_bpe_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


FINETUNE_CONFIG = """\
nats: {window: 64, lam: 3.0e-7}
loss: hidden_mse
data: {text_weight: 0.0, tasks: {passkey: {weight: 1.0}}}
stages: [{seq_len: 1024, steps: 30, batch_size: 4}]
optim: {lr: 2.0e-3}
log_interval: 10
"""


def check_finetune(tmp: Path, device: str) -> dict:
    base = make_base(tmp / "tiny-llama")
    (tmp / "ft.yaml").write_text(FINETUNE_CONFIG)
    rc, last, err, seconds = _cli("finetune", str(tmp / "ft.yaml"), "--model", str(base), "--out", str(tmp / "adapter"),
                                  "--steps", "30", "--device", device, "--no-progress", timeout=240)
    ok = rc == 0 and last is not None and (tmp / "adapter" / "adapter.safetensors").is_file()
    log(f"finetune 30 steps on {device}: rc {rc}, {seconds:.1f} s, {last} ({'ok' if ok else 'FAIL'})")
    res = {"ok": ok, "rc": rc, "seconds": round(seconds, 1), "result": last}
    if not ok:
        res["stderr_tail"] = err
    return res


def check_eval(tmp: Path, device: str) -> dict:
    rc, rec, err, seconds = _cli("eval", "--model", str(tmp / "tiny-llama"), "--adapter", str(tmp / "adapter"),
                                 "--policy", "nats", "--workload", "passkey", "--workload-param",
                                 "context_length=1024", "--n", "4", "--device", device, timeout=180)
    ok = rc in (0, 1) and rec is not None and rec.get("status") == DONE
    fields = {k: (rec or {}).get(k) for k in ("status", "error", "accuracy", "kept_fraction", "ttft_s", "tpot_s",
                                              "peak_memory_bytes", "adapter_sha256")}
    log(f"eval nats + adapter on {device}: rc {rc}, {seconds:.1f} s, {fields} ({'ok' if ok else 'FAIL'})")
    res = {"ok": ok, "rc": rc, "seconds": round(seconds, 1), **fields}
    if not ok:
        res["stderr_tail"] = err
    return res


def main() -> int:
    t0 = time.perf_counter()
    import torch

    if not torch.cuda.is_available():
        log("no CUDA device (torch.cuda.is_available() is False): nothing was run")
        print(json.dumps({"gpu_check": "skipped", "error": "no CUDA device", "torch": torch.__version__}))
        return 1
    device = "cuda"
    report: dict = {"gpu_check": "running", "device_name": torch.cuda.get_device_name(0), "torch": torch.__version__}
    steps = (("triton", lambda tmp: check_triton(device)), ("decode_kernel", lambda tmp: check_decode_kernel(device)),
             ("finetune", lambda tmp: check_finetune(tmp, device)),
             ("eval", lambda tmp: check_eval(tmp, device)))
    with tempfile.TemporaryDirectory(prefix="natsbench-gpu-check-") as tmp:
        os.environ.setdefault("NATSBENCH_CACHE_DIR", str(Path(tmp) / "cache"))
        for name, fn in steps:
            try:
                report[name] = fn(Path(tmp))
            except Exception as exc:  # noqa: BLE001 - one failed part must not hide the others' figures
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1500]}
                log(f"{name}: {report[name]['error']}")
            if name == "finetune" and not report[name]["ok"]:
                report["eval"] = {"ok": False, "error": "skipped: no adapter (finetune failed)"}
                break
    ok = all(report[n]["ok"] for n, _ in steps)
    report["gpu_check"] = "ok" if ok else "failed"
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
