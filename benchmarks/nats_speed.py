"""NAtS as fast as it is small: prefill TTFT and decode ms/token of the `nats` policy against the
full cache on the same base model, with the kept fraction and the physical KV bytes beside them.

Pairs (NAtS model vs its base with `full`, both loaded by `services.models.load_model`, fp32):
- `tiny-nats-ft` (the tiny GPT with its NAtS scorers) vs `tiny-base` (the headline pair: the targets);
- `tiny-llama-base` + the adapter `models/tiny-llama-nats` vs `tiny-llama-base`;
- `smollm2-135m-instruct` + `models/smollm2-135m-nats` vs `smollm2-135m-instruct`, when both folders
  exist (else the row says "skipped: run make real-model").
Per context (1k / 4k / 8k / 16k, the SmolLM2 pair up to `--max-context-real`; `--quick`: 1k / 4k, SmolLM2
at 1k, 8 new tokens, 2 repeats) a random token prompt
(seed 0; bytes for the byte-level tiny models), `nats_model.engine.generation.generate(model, ids, policy,
max_new_tokens=--new-tokens)` with 512-token prefill chunks. `full` and `nats` run alternately
`--repeats` times in this one process (load changes on a shared CPU hit both alike); TTFT is the median
of the repeats' `ttft_s`, ms/token the median of their `tpot_s`. `--threads` torch threads (1).

Targets (issue 24, the headline pair): NAtS TTFT <= full at every context >= 1k and <= 0.6x full at 8k;
NAtS decode <= full at 1k and <= 0.5x full at 8k. `--profile` (default; `--no-profile` skips it) adds the
top ops (torch.profiler, self CPU time) of one prefill and of the decode steps of NAtS and of the full
cache at `--profile-context` on the headline pair, and the ops and CPU time per step of each.
Human table first; the LAST line is one JSON object (`nats_ttft_over_full_<ctx>`,
`nats_decode_over_full_<ctx>`, the `*_target_met` booleans).

    flock /tmp/natsbench-heavy.lock .venv/bin/python benchmarks/nats_speed.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, NAtS model, its adapter or None, the full-cache base)
PAIRS = (
    ("tiny-nats-ft", "tiny-nats-ft", None, "tiny-base"),
    ("tiny-llama-nats", "tiny-llama-base", "models/tiny-llama-nats", "tiny-llama-base"),
    ("smollm2-135m-nats", "smollm2-135m-instruct", "models/smollm2-135m-nats", "smollm2-135m-instruct"),
)
HEADLINE = "tiny-nats-ft"
CHUNK = 512
TOP_OPS = 12


def ctx_label(ctx: int) -> str:
    return f"{ctx // 1024}k" if ctx % 1024 == 0 else str(ctx)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available(label: str, model: str, adapter: str | None, base: str) -> str | None:
    """None when the pair's folders exist, else why it is skipped."""
    missing = [p for p in (model, base, adapter) if p is not None and not (ROOT / "models" / Path(p).name).is_dir()]
    if not missing:
        return None
    if label.startswith("smollm2"):
        return "skipped: run make real-model"
    return f"skipped: missing {', '.join(missing)}"


def prompt(vocab: int, ctx: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (1, ctx), generator=g).to(device)


def run_once(model, ids: torch.Tensor, policy_name: str, new_tokens: int) -> dict:
    from nats_model.engine.generation import generate
    from nats_model.policies import build

    res = generate(model, ids, build(policy_name), max_new_tokens=new_tokens, prefill_chunk_size=CHUNK)
    return {"ttft_s": res.ttft_s, "tpot_s": res.tpot_s, "kept_fraction": float(res.kept_fraction),
            "kv_bytes_physical": int(res.kv_bytes_physical), "kv_bytes_physical_peak": int(res.kv_bytes_physical_peak),
            "kv_bytes_full": int(res.kv_bytes_full), "tokens": res.tokens[0].tolist()}


def measure(nats_model, full_model, vocab: int, ctx: int, args, device) -> dict[str, dict]:
    """full and nats alternately `repeats` times at one context; medians."""
    ids = prompt(vocab, ctx, device)
    runs: dict[str, list[dict]] = {"full": [], "nats": []}
    for _ in range(args.repeats):
        for name, m in (("full", full_model), ("nats", nats_model)):
            sync(device)
            runs[name].append(run_once(m, ids, name, args.new_tokens))
    rows = {}
    for name, rs in runs.items():
        row = dict(rs[-1])
        row["ttft_s"] = statistics.median(r["ttft_s"] for r in rs)
        row["ms_per_token"] = 1e3 * statistics.median(r["tpot_s"] for r in rs)
        row["ttft_runs_s"] = [round(r["ttft_s"], 4) for r in rs]
        row["ms_per_token_runs"] = [round(1e3 * r["tpot_s"], 3) for r in rs]
        rows[name] = row
    return rows


def top_ops(prof, steps: int = 1) -> list[dict]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "calls": round(e.count / steps, 1), "self_cpu_ms": round(e.self_cpu_time_total / 1e3 / steps, 3),
             "share": round(e.self_cpu_time_total / total, 4)} for e in events[:TOP_OPS]]


def profile_policy(model, policy_name: str, vocab: int, ctx: int, new_tokens: int, device) -> dict:
    """Top ops of one prefill (the whole prompt) and of the decode steps (per step) of `policy_name`,
    with the totals (ops called and self CPU ms) of each phase."""
    from torch.profiler import ProfilerActivity, profile

    import nats_model.engine.generation as gen
    from nats_model.policies import build

    ids = prompt(vocab, ctx, device)
    prefill_prof = profile(activities=[ProfilerActivity.CPU])
    decode_prof = profile(activities=[ProfilerActivity.CPU])
    original, picks = gen._pick, []

    def pick(*a, **k):  # the first pick ends prefill; decode steps run between the later ones
        tok = original(*a, **k)
        picks.append(1)
        if len(picks) == 1:
            prefill_prof.stop()
            decode_prof.start()
        return tok

    gen._pick = pick
    try:
        prefill_prof.start()
        gen.generate(model, ids, build(policy_name), max_new_tokens=new_tokens, prefill_chunk_size=CHUNK)
        decode_prof.stop()
    finally:
        gen._pick = original
    steps = max(1, new_tokens - 1)
    out = {"policy": policy_name, "context": ctx, "prefill_top_ops": top_ops(prefill_prof),
           "decode_top_ops_per_step": top_ops(decode_prof, steps)}
    for part, prof, n in (("prefill", prefill_prof, 1), ("decode", decode_prof, steps)):
        events = prof.key_averages()
        out[f"{part}_ops_per_{'run' if n == 1 else 'step'}"] = round(sum(e.count for e in events) / n, 1)
        out[f"{part}_self_cpu_ms_per_{'run' if n == 1 else 'step'}"] = round(
            sum(e.self_cpu_time_total for e in events) / 1e3 / n, 3)
    return out


def print_table(label: str, ctx: int, rows: dict[str, dict]) -> None:
    for name in ("full", "nats"):
        r = rows[name]
        print(f"{label:<19}{ctx:>7}{name:>6}{r['ttft_s']:>10.3f}{r['ms_per_token']:>10.2f}{r['kept_fraction']:>8.3f}"
              f"{r['kv_bytes_physical'] / 2**20:>10.2f}{r['kv_bytes_physical_peak'] / 2**20:>10.2f}"
              f"{r['kv_bytes_full'] / 2**20:>10.2f}", flush=True)
    f, n = rows["full"], rows["nats"]
    print(f"{'':<19}{'':>7}{'n/f':>6}{n['ttft_s'] / f['ttft_s']:>10.3f}{n['ms_per_token'] / f['ms_per_token']:>10.3f}",
          flush=True)


def markdown(tables: dict[str, dict], profile: dict | None) -> list[str]:
    """The README's view: one table per pair (full and nats side by side per context), and the
    profile's top ops when it ran."""
    out = []
    for label, t in tables.items():
        ctxs = sorted({int(k.split("@")[1].split()[0]) for k in t})
        lines = [f"NAtS speed, `{label}` vs its full-cache base:", "",
                 "| context | full TTFT s | nats TTFT s | nats/full | full ms/token | nats ms/token | nats/full "
                 "| nats kept | full KV MiB | nats KV MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for c in ctxs:
            def g(name, key, c=c, t=t):
                return t[f"{name}@{c} {key}"]
            lines.append(f"| {c} | {g('full', 'ttft_s'):.3f} | {g('nats', 'ttft_s'):.3f} | "
                         f"{g('nats', 'ttft_s') / g('full', 'ttft_s'):.2f} | {g('full', 'ms_per_token'):.2f} | "
                         f"{g('nats', 'ms_per_token'):.2f} | {g('nats', 'ms_per_token') / g('full', 'ms_per_token'):.2f} | "
                         f"{g('nats', 'kept_fraction'):.3f} | {g('full', 'kv_mib_physical'):.2f} | "
                         f"{g('nats', 'kv_mib_physical'):.2f} |")
        out.append("\n".join(lines))
    if profile:
        nats, full = profile["nats"], profile["full"]
        out.append(f"Profiled (torch.profiler, `{HEADLINE}` vs its base, {nats['context']} tokens): a NAtS decode step "
                   f"calls {nats['decode_ops_per_step']} ops for {nats['decode_self_cpu_ms_per_step']} ms of self CPU "
                   f"time, the full cache's {full['decode_ops_per_step']} ops for "
                   f"{full['decode_self_cpu_ms_per_step']} ms; the prefill {nats['prefill_ops_per_run']} ops / "
                   f"{nats['prefill_self_cpu_ms_per_run']} ms against {full['prefill_ops_per_run']} / "
                   f"{full['prefill_self_cpu_ms_per_run']} ms.")
        for part, key, unit in (("prefill", "prefill_top_ops", "ms per prefill"),
                                ("decode", "decode_top_ops_per_step", "ms per decode step")):
            lines = [f"Where the {part} time goes, nats | full (`{HEADLINE}` / its base, {nats['context']} tokens, "
                     f"self CPU {unit}):", "", "| nats op | calls | self CPU ms | share | full op | calls | self CPU ms "
                     "| share |", "|---|---|---|---|---|---|---|---|"]
            for a, b in zip(nats[key], full[key], strict=False):
                lines.append(f"| `{a['op']}` | {a['calls']} | {a['self_cpu_ms']} | {a['share']:.3f} | `{b['op']}` | "
                             f"{b['calls']} | {b['self_cpu_ms']} | {b['share']:.3f} |")
            out.append("\n".join(lines))
    return out


def parse_contexts(text: str) -> list[int]:
    try:
        out = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        out = []
    if not out or any(c < 2 for c in out):
        print(f"--contexts: comma-separated ints >= 2, got {text!r}", file=sys.stderr)
        sys.exit(2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="1024,4096,8192,16384")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pairs", default=",".join(p[0] for p in PAIRS), help="which pairs (labels), comma-separated")
    ap.add_argument("--max-context-real", type=int, default=4096,
                    help="longest context for the SmolLM2 pair (its 16k prefill takes minutes per run here)")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                    help="top ops of NAtS and full prefill and decode on the headline pair (default on)")
    ap.add_argument("--profile-context", type=int, default=8192)
    ap.add_argument("--quick", action="store_true", help="make bench QUICK=1: 1k and 4k, 8 new tokens, 2 repeats")
    args = ap.parse_args(argv)
    contexts = parse_contexts(args.contexts)
    if args.quick:
        contexts = [c for c in contexts if c <= 4096] or contexts[:1]
        args.new_tokens, args.repeats = 8, 2
        args.max_context_real = min(args.max_context_real, 1024)
        args.profile_context = min(args.profile_context, 4096)
    if args.new_tokens < 2 or args.repeats < 1:
        print(f"--new-tokens must be >= 2 and --repeats >= 1, got {args.new_tokens}, {args.repeats}", file=sys.stderr)
        sys.exit(2)
    labels = [p.strip() for p in args.pairs.split(",") if p.strip()]
    known = {p[0]: p for p in PAIRS}
    if not labels or any(lb not in known for lb in labels):
        print(f"--pairs: allowed values {', '.join(known)}; got {args.pairs!r}", file=sys.stderr)
        sys.exit(2)
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        print(f"--device: allowed values cpu, cuda (cuda needs a CUDA device); got {args.device!r}", file=sys.stderr)
        sys.exit(2)
    from services.models import load_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    summary: dict = {"benchmark": "nats_speed", "device": str(device), "threads": torch.get_num_threads(),
                     "contexts": contexts, "new_tokens": args.new_tokens, "repeats": args.repeats,
                     "prefill_chunk": CHUNK, "quick": args.quick, "headline": HEADLINE}
    print(f"NAtS vs full, {device}, {torch.get_num_threads()} thread(s), batch 1, random prompt, "
          f"median of {args.repeats} alternating runs, {args.new_tokens} new tokens")
    print(f"{'pair':<19}{'context':>7}{'':>6}{'TTFT s':>10}{'ms/token':>10}{'kept':>8}{'KV MiB':>10}{'peak MiB':>10}"
          f"{'full MiB':>10}")
    tables: dict[str, dict] = {}
    for label in labels:
        _, nats_name, adapter, base_name = known[label]
        why = available(*known[label])
        if why is not None:
            print(f"{label:<19} {why}")
            summary[f"{label}_status"] = why
            continue
        nats_h = load_model(nats_name, device=args.device, adapter=adapter)
        full_model = load_model(base_name, device=args.device).model  # its own copy (no scorers attached)
        vocab = int(getattr(getattr(nats_h.model, "config", None), "vocab_size", 256))
        ctxs = [c for c in contexts if not label.startswith("smollm2") or c <= args.max_context_real]
        for ctx in ctxs:
            rows = measure(nats_h.model, full_model, vocab, ctx, args, device)
            print_table(label, ctx, rows)
            lab = ctx_label(ctx)
            f, n = rows["full"], rows["nats"]
            key = "" if label == HEADLINE else f"{label}_"
            summary[f"{key}nats_ttft_over_full_{lab}"] = round(n["ttft_s"] / f["ttft_s"], 4)
            summary[f"{key}nats_decode_over_full_{lab}"] = round(n["ms_per_token"] / f["ms_per_token"], 4)
            t = tables.setdefault(label, {})
            for name, r in rows.items():
                t[f"{name}@{ctx} ttft_s"] = round(r["ttft_s"], 4)
                t[f"{name}@{ctx} ms_per_token"] = round(r["ms_per_token"], 3)
                t[f"{name}@{ctx} kept_fraction"] = round(r["kept_fraction"], 4)
                t[f"{name}@{ctx} kv_mib_physical"] = round(r["kv_bytes_physical"] / 2**20, 3)
        if label == HEADLINE and args.profile:
            summary["profile"] = {name: profile_policy(m, name, vocab, args.profile_context, args.new_tokens, device)
                                  for name, m in (("nats", nats_h.model), ("full", full_model))}
        del nats_h, full_model
    summary["tables"] = tables  # per pair: "<policy>@<context> <field>" -> value
    summary["markdown_tables"] = markdown(tables, summary.get("profile"))
    labs = [ctx_label(c) for c in contexts]
    ttft = [summary.get(f"nats_ttft_over_full_{lab}") for lab in labs]
    dec = {lab: summary.get(f"nats_decode_over_full_{lab}") for lab in labs}
    if all(v is not None for v in ttft):
        summary["nats_ttft_le_full_all_met"] = all(v <= 1.0 for v in ttft)
    if summary.get("nats_ttft_over_full_8k") is not None:
        summary["nats_ttft_8k_le_0_6_met"] = summary["nats_ttft_over_full_8k"] <= 0.6
    if dec.get("1k") is not None:
        summary["nats_decode_1k_le_full_met"] = dec["1k"] <= 1.0
    if dec.get("8k") is not None:
        summary["nats_decode_8k_le_0_5_met"] = dec["8k"] <= 0.5
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
