"""Peak memory of a 16k-token prefill on a tiny random Llama with a 32k vocabulary: what asking the
model for the last position's logits only (`logits_to_keep=1`, issue #12 item 6) saves.

Model: random `LlamaForCausalLM`, 2 layers, hidden 256, 4 query / 2 KV heads, vocabulary 32000,
fp32, batch 1 (its weights are 2 x 32000 x 256 x 4 B = 66 MB; the logits of one position are
128 KB). Each configuration runs `nats_model.engine.generation.generate(..., max_new_tokens=2)` with the
`full` policy in a fresh child process, so its peak RSS (`ru_maxrss`; on CUDA
`torch.cuda.max_memory_allocated`) is its own: prefill in chunks of 512 and in one piece, each
with `logits_to_keep=1` (what the engine does) and with every position's logits (the engine before
this change, simulated by ignoring the option). The baseline is the RSS after building the model
and the prompt, before the prefill. Human table first; the LAST line is one JSON object.

    flock /tmp/natsbench-heavy.lock .venv/bin/python benchmarks/prefill_memory.py [--tokens 16384] [--device cpu] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VOCAB, HIDDEN, LAYERS = 32000, 256, 2


def _child(tokens: int, chunk: int | None, keep_last: bool, device: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nats_model.engine.generation import generate
    from nats_model.models.bridge import HFBridge
    from nats_model.policies import build

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=tokens + 16)
    model = LlamaForCausalLM(cfg).eval().to(device)
    ids = torch.randint(0, VOCAB, (1, tokens), device=device)
    if not keep_last:  # the engine before logits_to_keep: every position's logits of every chunk
        forward = HFBridge.forward
        HFBridge.forward = lambda self, i, p, e, logits_to_keep=0: forward(self, i, p, e, 0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    with torch.no_grad():
        generate(model, ids, build("full"), max_new_tokens=2, prefill_chunk_size=chunk)
    seconds = time.perf_counter() - t0
    if device.startswith("cuda"):
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"
    return {"tokens": tokens, "prefill_chunk": chunk, "logits_to_keep": 1 if keep_last else "all",
            "peak_bytes": peak, "baseline_bytes": base, "prefill_extra_bytes": peak - base, "measure": kind,
            "seconds": round(seconds, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="4096 tokens instead of --tokens (make bench QUICK=1)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.tokens = 4096
    if args.child is not None:
        chunk, keep = args.child.split(",")
        print(json.dumps(_child(args.tokens, None if chunk == "none" else int(chunk), keep == "1", args.device)))
        return 0
    rows = []
    for chunk in ("512", "none"):
        for keep in ("1", "all"):
            out = subprocess.run([sys.executable, __file__, "--tokens", str(args.tokens), "--device", args.device,
                                  "--child", f"{chunk},{keep}"], capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    mib = 1 << 20
    print(f"prefill of {args.tokens} tokens, random Llama (vocab {VOCAB}, hidden {HIDDEN}, {LAYERS} layers), "
          f"policy full, {args.device}")
    print(f"{'chunk':>6} {'logits':>7} {'peak MiB':>9} {'prefill extra MiB':>18} {'s':>6}")
    for r in rows:
        print(f"{str(r['prefill_chunk']):>6} {str(r['logits_to_keep']):>7} {r['peak_bytes'] / mib:9.0f} "
              f"{r['prefill_extra_bytes'] / mib:18.0f} {r['seconds']:6.1f}")
    by = {(r["prefill_chunk"], r["logits_to_keep"]): r for r in rows}
    extra = {f"prefill_extra_mib_{'chunk512' if c == 512 else 'one_piece'}_{'last' if k == 1 else 'all'}":
             round(r["prefill_extra_bytes"] / mib, 1) for (c, k), r in by.items()}
    print(json.dumps({"benchmark": "prefill_memory", "tokens": args.tokens, "device": args.device, "vocab": VOCAB,
                      **extra, "peak_mib_chunk512_last": round(by[(512, 1)]["peak_bytes"] / mib, 1),
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
