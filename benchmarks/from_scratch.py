"""The paper's from-scratch experiment on real text: a NAtS model against its full-attention twin.

The pair: `models/scratch-nats` and `models/scratch-full`, the same byte-level GPT shape trained
from scratch on the same real text (the Python standard library's sources, train split by file)
with the same steps, schedule and seed; only the attention differs (configs/train_scratch_*.yaml).
Both are scored by streaming perplexity on the held-out split (files neither model saw): the
`lm_text` workload through the engine (`services.evaluation.run_cell`: one window of `--context`
tokens at a time, token by token, the policy evicting after every token, as StreamingLLM
evaluates streaming perplexity). Cells, all on the same windows:

- scratch NAtS model, policy `nats` (its learned types decide what the cache keeps; the kept
  fraction is measured: kept / seen at the end of each window, mean over windows, layers, heads);
- full twin, policy `full`;
- full twin, `h2o` and `streaming_llm` at a budget of 12.5% of the tokens seen;
- full twin, `h2o` and `streaming_llm` at the NAtS model's measured kept fraction.

Each perplexity has a 95% bootstrap interval over windows (resampling whole windows); the NAtS
vs H2O-at-12.5% difference in mean NLL has a paired bootstrap interval (same windows). The paper's
claim (NAtS keeps ~3% of the cache at lower perplexity than H2O at 12.5%) is the target:
`scratch_nats_ppl <= twin_h2o_12_5_ppl` at `scratch_nats_kv_fraction <= 0.10`.

    .venv/bin/python benchmarks/from_scratch.py            # 64 windows of 1024 tokens (~10 min, 1 core)
    .venv/bin/python benchmarks/from_scratch.py --quick    # 10 windows (~1.5 min on 1 core)

Human table first; the LAST stdout line is one JSON object (keys `scratch_nats_ppl`,
`scratch_nats_kv_fraction`, `twin_full_ppl`, `twin_h2o_12_5_ppl`, `twin_streaming_12_5_ppl`,
`twin_h2o_at_nats_ppl`, `twin_streaming_at_nats_ppl`, each ppl with a `_ci95` [lo, hi], `n`,
`context`, ...). Bad input: one line naming the option, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.declaration import DONE  # noqa: E402 - after the path above

NATS_MODEL = ROOT / "models" / "scratch-nats"
FULL_MODEL = ROOT / "models" / "scratch-full"
BASELINE_BUDGET = 0.125
FULL_WINDOWS, QUICK_WINDOWS = 64, 10


def bootstrap_mean_ci(values: list[float], weights: list[float], n_boot: int, seed: int,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the weighted mean of `values` over `n_boot` resamples of the items."""
    rng = random.Random(seed)
    n = len(values)
    means = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        w = sum(weights[i] for i in idx)
        means.append(sum(values[i] * weights[i] for i in idx) / w)
    means.sort()
    lo = means[int(math.floor((1 - level) / 2 * (n_boot - 1)))]
    hi = means[int(math.ceil((1 + level) / 2 * (n_boot - 1)))]
    return lo, hi


def paired_diff_ci(a: list[float], b: list[float], weights: list[float], n_boot: int, seed: int) -> tuple[float, float]:
    """95% bootstrap interval of weighted-mean(a) - weighted-mean(b) over the same resampled items."""
    return bootstrap_mean_ci([x - y for x, y in zip(a, b, strict=True)], weights, n_boot, seed)


def run_cell_nll(handle, policy: str, policy_params: dict, context: int, n: int, seed: int) -> dict:
    """One lm_text cell through the engine -> per-window NLL, token counts, kept fraction, wall time."""
    from services.evaluation import run_cell

    t0 = time.perf_counter()
    rec = run_cell(handle, {"workload": "lm_text", "workload_params": {"context_length": context},
                            "policy": policy, "policy_params": policy_params, "n_examples": n, "seed": seed})
    if rec["status"] != DONE:
        raise RuntimeError(f"{policy} {policy_params} on {handle.name}: {rec['error']}")
    ex = rec["extras"]["examples"]
    return {"nll": [e["nll"] for e in ex], "tokens": [e["scored_tokens"] for e in ex],
            "kept_fraction": rec["kept_fraction"], "ppl": rec["extras"]["ppl"],
            "wall_s": round(time.perf_counter() - t0, 2)}


def summarise(cell: dict, n_boot: int, seed: int) -> dict:
    lo, hi = bootstrap_mean_ci(cell["nll"], cell["tokens"], n_boot, seed)
    return {"ppl": cell["ppl"], "ppl_ci95": [math.exp(lo), math.exp(hi)], "kept_fraction": cell["kept_fraction"],
            "wall_s": cell["wall_s"]}


def markdown_table(rows: list[tuple[str, str, str, dict]]) -> str:
    lines = ["| model | policy | budget | perplexity | 95% CI | kept fraction |", "|---|---|---|---|---|---|"]
    for model, policy, budget, s in rows:
        lo, hi = s["ppl_ci95"]
        lines.append(f"| {model} | {policy} | {budget} | {s['ppl']:.4f} | [{lo:.4f}, {hi:.4f}] | "
                     f"{s['kept_fraction']:.4f} |")
    return "\n".join(lines)


def _shown(path: str) -> str:
    """A model folder as the report shows it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def fail(message: str) -> int:
    print(f"from_scratch: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_WINDOWS} windows instead of {FULL_WINDOWS}")
    ap.add_argument("--nats-model", default=str(NATS_MODEL), help="the NAtS model's checkpoint folder")
    ap.add_argument("--full-model", default=str(FULL_MODEL), help="the full-attention twin's checkpoint folder")
    ap.add_argument("--context", type=int, default=1024, help="tokens per held-out window (default 1024)")
    ap.add_argument("--windows", type=int, default=None, help="held-out windows per cell (default 64, quick 10)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the window draw and the bootstrap")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    n = args.windows if args.windows is not None else (QUICK_WINDOWS if args.quick else FULL_WINDOWS)
    if n < 2:
        return fail(f"--windows must be >= 2 (a bootstrap needs two windows), got {n}")
    if args.context < 2:
        return fail(f"--context must be >= 2 tokens, got {args.context}")
    if args.bootstrap < 10:
        return fail(f"--bootstrap must be >= 10 resamples, got {args.bootstrap}")
    if args.threads < 1:
        return fail(f"--threads must be >= 1, got {args.threads}")
    for opt, path in (("--nats-model", args.nats_model), ("--full-model", args.full_model)):
        if not (Path(path) / "config.json").is_file():
            return fail(f"{opt} {path!r} is not a checkpoint folder (no config.json); train it with "
                        "`natsbench train configs/train_scratch_{nats,full}.yaml`")

    import torch

    from services.models import load_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    nats_h, full_h = load_model(args.nats_model), load_model(args.full_model)
    if nats_h.model.config.attention != "nats":
        return fail(f"--nats-model {args.nats_model!r} has attention {nats_h.model.config.attention!r}, want 'nats'")
    ctx, seed = args.context, args.seed

    cells = {"nats": run_cell_nll(nats_h, "nats", {}, ctx, n, seed)}
    frac = cells["nats"]["kept_fraction"]
    cells["full"] = run_cell_nll(full_h, "full", {}, ctx, n, seed)
    cells["h2o_12_5"] = run_cell_nll(full_h, "h2o", {"budget": BASELINE_BUDGET}, ctx, n, seed)
    cells["streaming_12_5"] = run_cell_nll(full_h, "streaming_llm", {"budget": BASELINE_BUDGET}, ctx, n, seed)
    cells["h2o_at_nats"] = run_cell_nll(full_h, "h2o", {"budget": frac}, ctx, n, seed)
    cells["streaming_at_nats"] = run_cell_nll(full_h, "streaming_llm", {"budget": frac}, ctx, n, seed)
    s = {k: summarise(v, args.bootstrap, seed) for k, v in cells.items()}
    tokens = cells["nats"]["tokens"]
    if cells["h2o_12_5"]["tokens"] != tokens:
        raise RuntimeError("the NAtS and full-twin cells scored different windows")
    d_lo, d_hi = paired_diff_ci(cells["nats"]["nll"], cells["h2o_12_5"]["nll"], tokens, args.bootstrap, seed)

    pct = f"{BASELINE_BUDGET:.1%}"
    at = f"{frac:.2%} (NAtS)"
    nm, fm = Path(args.nats_model).name, Path(args.full_model).name
    rows = [(nm, "nats", "learned", s["nats"]), (fm, "full", "100%", s["full"]),
            (fm, "h2o", pct, s["h2o_12_5"]), (fm, "streaming_llm", pct, s["streaming_12_5"]),
            (fm, "h2o", at, s["h2o_at_nats"]), (fm, "streaming_llm", at, s["streaming_at_nats"])]
    table = markdown_table(rows)
    print(f"From-scratch pair: streaming perplexity on {n} held-out windows of {ctx} tokens "
          f"(stdlib sources, held-out split), 95% bootstrap intervals over windows")
    print(table)
    met_ppl = s["nats"]["ppl"] <= s["h2o_12_5"]["ppl"]
    print(f"NAtS - H2O@12.5% mean NLL: {math.log(s['nats']['ppl']) - math.log(s['h2o_12_5']['ppl']):+.4f} nats/token "
          f"(paired 95% CI [{d_lo:+.4f}, {d_hi:+.4f}]); target ppl <= H2O@12.5%: {'met' if met_ppl else 'MISSED'}; "
          f"kept {frac:.4f} <= 0.10: {'met' if frac <= 0.10 else 'MISSED'}")
    out = {
        "scratch_nats_ppl": s["nats"]["ppl"], "scratch_nats_ppl_ci95": s["nats"]["ppl_ci95"],
        "scratch_nats_kv_fraction": frac,
        "twin_full_ppl": s["full"]["ppl"], "twin_full_ppl_ci95": s["full"]["ppl_ci95"],
        "twin_h2o_12_5_ppl": s["h2o_12_5"]["ppl"], "twin_h2o_12_5_ppl_ci95": s["h2o_12_5"]["ppl_ci95"],
        "twin_h2o_12_5_kv_fraction": s["h2o_12_5"]["kept_fraction"],
        "twin_streaming_12_5_ppl": s["streaming_12_5"]["ppl"],
        "twin_streaming_12_5_ppl_ci95": s["streaming_12_5"]["ppl_ci95"],
        "twin_h2o_at_nats_ppl": s["h2o_at_nats"]["ppl"], "twin_h2o_at_nats_ppl_ci95": s["h2o_at_nats"]["ppl_ci95"],
        "twin_h2o_at_nats_kv_fraction": s["h2o_at_nats"]["kept_fraction"],
        "twin_streaming_at_nats_ppl": s["streaming_at_nats"]["ppl"],
        "twin_streaming_at_nats_ppl_ci95": s["streaming_at_nats"]["ppl_ci95"],
        "nats_minus_h2o_12_5_nll": math.log(s["nats"]["ppl"]) - math.log(s["h2o_12_5"]["ppl"]),
        "nats_minus_h2o_12_5_nll_ci95": [d_lo, d_hi],
        "n": n, "context": ctx, "scored_tokens_per_cell": sum(tokens), "bootstrap": args.bootstrap, "seed": seed,
        "nats_model": _shown(args.nats_model), "full_model": _shown(args.full_model),
        "cell_wall_s": {k: v["wall_s"] for k, v in s.items()},
        "wall_s": round(time.perf_counter() - t0, 2),
        "markdown_tables": [table],
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
