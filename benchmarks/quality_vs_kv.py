"""Quality per physical KV byte: every KV policy at matched physical KV budgets, with 95% intervals.

Model families (the reference models; each family's `full` and baselines run on its base weights):
- `gpt`: full / streaming_llm / h2o / snapkv / tova on `tiny-base`, `nats` on `tiny-nats-ft` (tiny-base's
  frozen weights plus trained NAtS scorers);
- `tiny_llama`: full and the baselines on `tiny-llama-base`, `nats` on `tiny-llama-base` with its NAtS
  adapter `models/tiny-llama-nats`.
Workloads: passkey@1024, niah_multikey@512, niah_multikey@1024, variable_tracking@512 (exact match) and
lm_text (streaming perplexity over held-out stdlib source, `chunk_size` tokens per scoring step).
Budgets: each baseline at 5%, 10%, 20%, 50% of the tokens seen, and once more at the NAtS model's measured
KV fraction on that workload (rounded up to a thousandth: "at the same physical KV").

Every cell is one `services.evaluation.run_cell` (the evaluation the sweep stores: greedy generation with
the memory-true cache, `services.metrics`), seed 0 for all cells, so every policy sees the same instances.
`kv_fraction` = the physical K+V bytes the policy's cache held at the end of each example (the engine's
`kv_bytes_physical`) summed over the cell's instances / the same sum for `full` on the same model and the same
instances (matched by content hash). SnapKV's budget applies to the prompt only (generated tokens are
appended), so its measured fraction sits a little above its budget; the others hold ceil(budget x seen).
Baselines (`--baselines`): the four of the first waves by default, `all` for every registered policy but
full and nats (adds Knorm, Expected Attention, PyramidKV, AdaKV). Protocols (`--protocols`): `default` runs
each baseline under its own default protocol (what the first waves measured); `all` runs it under every
compression protocol it declares (streaming / prompt / context, README "Compression protocols"; `context`
only where the workload splits context from question, never lm_text), so "the best baseline at NAtS's
fraction" is taken over every policy x protocol (points carry `compress`; the best is named policy/protocol).
Intervals: Wilson 95% for accuracy; for perplexity a bootstrap 95% percentile interval (2000 resamples of the
cell's text windows, token-weighted NLL, fixed seed).

Headline (the top-level JSON keys `full_acc`, `nats_acc`, `nats_kv_fraction`, `best_baseline`, ...): the `gpt`
family on passkey@1024 (the first family, first headline workload). The same keys per headline workload
(passkey@1024 and niah_multikey@512) and per family are in the flat sub-objects `gpt` and `tiny_llama`
(key `<workload>.<name>`). `best_baseline` = the baseline with the highest accuracy at the NAtS model's KV
fraction; `intervals_separate` = NAtS's Wilson lower bound > that baseline's upper bound. `targets_met` (per row)
= all four targets of issue #15 (nats >= 0.95 x full at KV <= 0.15, >= 0.20 above the best baseline, intervals
apart); `all_headline_rows_met` / `headline_rows_missed` cover every family x headline workload.
Headline rows (full, nats and the baselines at NAtS's fraction on the headline workloads) use `n_headline`
examples (full variant 200, quick 100); the other cells `n_grid` (full 100, quick 8) and lm_text `n_lm`
windows; every point carries its own `n`.

Cost, on the 2-core CPU of the dev machine at 1 torch thread, under the heavy-job lock, with the other core
busy with a training run (2 threads there ran about 10x slower: they thrash): the quick variant (220 cells)
measured 211 s (2026-12-02). The full variant was not timed to the end (the run was stopped after the `gpt`
family's four accuracy workloads, about 13 minutes); estimated from that at about 40 minutes in all (the
lm_text@1024 cells, 24 windows each, about 7 minutes per family). `wall_s` in the JSON is what a run took.

    .venv/bin/python benchmarks/quality_vs_kv.py [--quick] [--families gpt,tiny_llama]
        [--workloads passkey@1024,niah_multikey@512,...] [--headline passkey@1024,niah_multikey@512]
        [--budgets 0.05,0.1,0.2,0.5|none] [--n-headline N] [--n-grid N] [--n-lm N] [--threads 2]
        [--baselines streaming_llm,h2o,...|all] [--protocols default|all]
        [--adapter DIR]   (tiny_llama: evaluate `nats` with another adapter than models/tiny-llama-nats)

Human table first; the LAST stdout line is one JSON object (`points` is what benchmarks/plots.py draws).
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

from services.declaration import DONE, default_protocol  # noqa: E402 - after the path above

BASELINES = ("streaming_llm", "h2o", "snapkv", "tova")
FAMILIES = {
    "gpt": {"base": ("tiny-base", None), "nats": ("tiny-nats-ft", None)},
    "tiny_llama": {"base": ("tiny-llama-base", None), "nats": ("tiny-llama-base", "models/tiny-llama-nats")},
    # the real model (natsbench model fetch smollm2-135m-instruct) with its trained scorers; the task workloads
    # go through its chat template; issue #22's headline fraction bound is 0.25
    "smollm2": {"base": ("smollm2-135m-instruct", None), "nats": ("smollm2-135m-instruct", "models/smollm2-135m-nats"),
                "workload_params": {"chat": "on"}, "max_kv_fraction": 0.25},
}
MAX_KV_FRACTION = 0.15  # issue #15's bound for the tiny families
WORKLOAD_NAMES = ("passkey", "niah_multikey", "variable_tracking", "lm_text")
VARIANTS = {
    "full": {"workloads": "passkey@1024,niah_multikey@512,niah_multikey@1024,variable_tracking@512,lm_text@1024",
             "n_headline": 200, "n_grid": 100, "n_lm": 24},
    "quick": {"workloads": "passkey@1024,niah_multikey@512,niah_multikey@1024,variable_tracking@512,lm_text@512",
              "n_headline": 100, "n_grid": 8, "n_lm": 6},
}
DEFAULT_HEADLINE = "passkey@1024,niah_multikey@512"
DEFAULT_BUDGETS = "0.05,0.1,0.2,0.5"
LM_CHUNK = 16
Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000


# ---------------------------------------------------------------- intervals

def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion successes / n."""
    if n <= 0:
        raise ValueError("wilson: n must be >= 1")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ppl(nll_sums: list[float], tokens: list[int], resamples: int = BOOTSTRAP_RESAMPLES,
                  seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of exp(sum NLL / sum tokens), resampling whole windows."""
    rng = random.Random(seed)
    k = len(nll_sums)
    stats = []
    for _ in range(resamples):
        idx = [rng.randrange(k) for _ in range(k)]
        t = sum(tokens[i] for i in idx)
        stats.append(math.exp(sum(nll_sums[i] for i in idx) / t) if t else math.nan)
    stats.sort()
    return stats[int(0.025 * (resamples - 1))], stats[int(math.ceil(0.975 * (resamples - 1)))]


# ---------------------------------------------------------------- arguments

def fail(msg: str) -> None:
    print(msg, file=sys.stderr)
    raise SystemExit(2)


def parse_workloads(text: str, option: str) -> list[str]:
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, _, ctx = item.partition("@")
        if name not in WORKLOAD_NAMES or not ctx.isdigit() or int(ctx) < 16:
            fail(f"{option}: bad workload {item!r}; allowed: <name>@<context tokens >= 16> with name one of "
                 f"{', '.join(WORKLOAD_NAMES)}")
        out.append(item)
    if not out:
        fail(f"{option}: give at least one workload, e.g. passkey@1024")
    return out


def workload_params(label: str, extra: dict | None = None) -> tuple[str, dict]:
    """(workload, params) of a label such as passkey@1024; `extra` (a family's task parameters, e.g. chat=on)
    applies to the task workloads, not to lm_text."""
    name, _, ctx = label.partition("@")
    params: dict = {"context_length": int(ctx)}
    if name == "lm_text":
        params["chunk_size"] = LM_CHUNK
    else:
        params.update(extra or {})
    return name, params


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the quick variant (fewer examples, lm_text@512)")
    ap.add_argument("--families", default="gpt,tiny_llama", help=f"comma-separated: {', '.join(FAMILIES)}")
    ap.add_argument("--workloads", default=None, help="comma-separated <workload>@<context>")
    ap.add_argument("--headline", default=DEFAULT_HEADLINE, help="headline workloads (the first is the top level)")
    ap.add_argument("--budgets", default=DEFAULT_BUDGETS, help="baseline budgets, fractions in (0, 1]")
    ap.add_argument("--n-headline", type=int, default=None, help="examples per headline cell")
    ap.add_argument("--n-grid", type=int, default=None, help="examples per other cell")
    ap.add_argument("--n-lm", type=int, default=None, help="text windows per lm_text cell")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: these small models gain nothing from more, and a second thread "
                         "thrashes when the other core is busy)")
    ap.add_argument("--seed", type=int, default=0, help="instance seed (all cells)")
    ap.add_argument("--baselines", default=",".join(BASELINES),
                    help="comma-separated baseline policies, or all (every registered policy but full and nats)")
    ap.add_argument("--protocols", default="default", choices=("default", "all"),
                    help="default: each baseline's own protocol; all: every protocol it supports")
    ap.add_argument("--adapter", default=None,
                    help="tiny_llama family: the NAtS adapter folder for `nats` (default models/tiny-llama-nats), "
                         "e.g. a candidate from `natsbench finetune` before it replaces the shipped one")
    args = ap.parse_args(argv)
    variant = VARIANTS["quick" if args.quick else "full"]
    args.variant = "quick" if args.quick else "full"
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        fail(f"--families: unknown {bad}; allowed: {', '.join(FAMILIES)}")
    args.families = families
    args.workloads = parse_workloads(args.workloads or variant["workloads"], "--workloads")
    args.headline = [w for w in parse_workloads(args.headline, "--headline") if w in args.workloads]
    if not args.headline:
        fail("--headline: none of the headline workloads is in --workloads")
    if any(w.startswith("lm_text") for w in args.headline):
        fail("--headline: lm_text has no accuracy; allowed: passkey, niah_multikey, variable_tracking")
    if args.budgets.strip() == "none":  # only the baselines at NAtS's fraction
        args.budgets = []
    else:
        try:
            args.budgets = sorted({float(b) for b in args.budgets.split(",") if b.strip()})
        except ValueError:
            fail(f"--budgets: {args.budgets!r} is not a comma-separated list of fractions in (0, 1], or none")
        if not args.budgets or any(not 0 < b <= 1 for b in args.budgets):
            fail(f"--budgets: {args.budgets!r}; allowed: fractions in (0, 1], or none")
    from nats_model import policies

    known = [n for n in policies.available() if n not in ("full", "nats")]
    wanted = known if args.baselines.strip() == "all" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    bad = [b for b in wanted if b not in known]
    if bad or not wanted:
        fail(f"--baselines: unknown {bad}; allowed: all, or a comma-separated list of {', '.join(known)}")
    args.baselines = wanted
    for key in ("n_headline", "n_grid", "n_lm"):
        value = getattr(args, key)
        if value is None:
            setattr(args, key, variant[key])
        elif value < 1:
            fail(f"--{key.replace('_', '-')}: {value}; allowed: integers >= 1")
    if args.threads < 1:
        fail(f"--threads: {args.threads}; allowed: integers >= 1")
    if args.adapter is not None:
        if "tiny_llama" not in families:
            fail("--adapter: applies to the tiny_llama family only; allowed with --families including tiny_llama")
        if not (Path(args.adapter) / "adapter_config.json").is_file():
            fail(f"--adapter: {args.adapter!r} is not an adapter folder (no adapter_config.json); "
                 "allowed: a folder written by `natsbench finetune` or `natsbench adapter import`")
    return args


# ---------------------------------------------------------------- cells

class Runner:
    """Loads each model once and runs cells through `services.evaluation.run_cell`."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.handles: dict = {}
        self.cells = 0

    def handle(self, model: str, adapter: str | None):
        from services.evaluation import load_model

        key = (model, adapter)
        if key not in self.handles:
            self.handles[key] = load_model(model, adapter=adapter)
        return self.handles[key]

    def run(self, model: str, adapter: str | None, policy: str, params: dict, label: str, n: int,
            extra: dict | None = None, compress: str | None = None) -> dict:
        from services.adapters import adapter_fields
        from services.evaluation import run_cell

        name, wparams = workload_params(label, extra)
        config = {"model": model, "policy": policy, "policy_params": params, "workload": name,
                  "workload_params": wparams, "n_examples": n, "seed": self.seed, **adapter_fields(adapter)}
        if compress is not None:
            config["compress"] = compress
        record = run_cell(self.handle(model, adapter), config)
        self.cells += 1
        if record["status"] != DONE:
            raise RuntimeError(f"cell {model} {policy} {params} {label} failed: {record['error']}")
        return record


def kv_fraction(record: dict, full_bytes: dict[str, float]) -> float:
    """Physical KV bytes of the cell's examples / full's physical bytes on the same instances."""
    examples = record["extras"]["examples"]
    num = sum(e["kv_bytes_physical"] for e in examples)
    den = 0.0
    for e in examples:
        if e["content_hash"] not in full_bytes:
            raise RuntimeError(f"instance {e['id']} of {record['policy']} was not run by full")
        den += full_bytes[e["content_hash"]]
    return num / den


def point(family: str, record: dict, label: str, budget, frac: float, at_nats_kv: bool = False) -> dict:
    examples = record["extras"]["examples"]
    n = len(examples)
    if record["accuracy"] is not None:
        value = float(record["accuracy"])
        low, high = wilson(sum(e["score"] for e in examples), n)
        metric = "accuracy"
    else:
        value = float(record["extras"]["ppl"])
        tokens = [e["scored_tokens"] for e in examples]
        low, high = bootstrap_ppl([e["nll"] * t for e, t in zip(examples, tokens, strict=True)], tokens)
        metric = "perplexity"
    return {"family": family, "model": record["model"] + (" + " + record["adapter"] if record.get("adapter") else ""),
            "workload": label, "policy": record["policy"], "budget": budget, "kv_fraction": round(frac, 5),
            "value": round(value, 5), "ci_low": round(low, 5), "ci_high": round(high, 5), "metric": metric, "n": n,
            "kept_fraction": round(record["kept_fraction"], 5), "at_nats_kv": at_nats_kv,
            "compress": record.get("compress") or (record.get("config") or {}).get("compress")
            or default_protocol(record["policy"])}


def protocols_for(policy: str, label: str, which: str) -> list[str | None]:
    """The protocols a baseline runs under on a workload: [None] (its default) or every protocol it declares,
    less `context` on a workload without a context/question split (lm_text)."""
    if which == "default":
        return [None]
    from services.declaration import policy_protocols

    allowed, _ = policy_protocols(policy)
    return [c for c in allowed if not (c == "context" and label.startswith("lm_text"))]


def label_of(p: dict) -> str:
    """policy, or policy/protocol when the protocol is not the policy's default."""
    return p["policy"] if p.get("compress") in (None, default_protocol(p["policy"])) else f"{p['policy']}/{p['compress']}"


def run_family(runner: Runner, family: str, args, log) -> list[dict]:
    base, adapter_nats = FAMILIES[family]["base"], FAMILIES[family]["nats"]
    if family in ("tiny_llama", "smollm2") and args.adapter is not None:
        adapter_nats = (adapter_nats[0], args.adapter)
    extra = FAMILIES[family].get("workload_params")
    points = []
    for label in args.workloads:
        is_lm = label.startswith("lm_text")
        headline = label in args.headline
        n_main = args.n_lm if is_lm else (args.n_headline if headline else args.n_grid)
        n_grid = args.n_lm if is_lm else args.n_grid
        full = runner.run(*base, "full", {}, label, max(n_main, n_grid), extra)
        full_bytes = {e["content_hash"]: e["kv_bytes_physical"] for e in full["extras"]["examples"]}
        points.append(log(point(family, full, label, 1.0, 1.0)))
        nats = runner.run(*adapter_nats, "nats", {}, label, n_main, extra)
        nats_frac = kv_fraction(nats, full_bytes)
        points.append(log(point(family, nats, label, None, nats_frac)))
        at_nats = min(1.0, math.ceil(nats_frac * 1000 - 1e-9) / 1000)
        for policy in args.baselines:
            for compress in protocols_for(policy, label, args.protocols):
                rec = runner.run(*base, policy, {"budget": at_nats}, label, n_main, extra, compress)
                points.append(log(point(family, rec, label, at_nats, kv_fraction(rec, full_bytes), at_nats_kv=True)))
                for budget in args.budgets:
                    rec = runner.run(*base, policy, {"budget": budget}, label, n_grid, extra, compress)
                    points.append(log(point(family, rec, label, budget, kv_fraction(rec, full_bytes))))
    return points


# ---------------------------------------------------------------- summary

def headline(points: list[dict], family: str, label: str) -> dict | None:
    rows = [p for p in points if p["family"] == family and p["workload"] == label]
    full = next((p for p in rows if p["policy"] == "full"), None)
    nats = next((p for p in rows if p["policy"] == "nats"), None)
    at = [p for p in rows if p["at_nats_kv"]]
    if full is None or nats is None or not at:
        return None
    best = max(at, key=lambda p: (p["value"], -p["kv_fraction"]))
    return {
        "full_acc": full["value"], "full_acc_ci95": [full["ci_low"], full["ci_high"]],
        "nats_acc": nats["value"], "nats_acc_ci95": [nats["ci_low"], nats["ci_high"]],
        "nats_kv_fraction": nats["kv_fraction"],
        "best_baseline": label_of(best), "best_baseline_acc_at_nats_kv": best["value"],
        "best_baseline_acc_ci95": [best["ci_low"], best["ci_high"]],
        "best_baseline_kv_fraction": best["kv_fraction"],
        "nats_acc_over_full_acc": round(nats["value"] / full["value"], 5) if full["value"] > 0 else None,
        "nats_minus_best_baseline_acc": round(nats["value"] - best["value"], 5),
        "intervals_separate": nats["ci_low"] > best["ci_high"],
        "n": min(full["n"], nats["n"], best["n"]),
        "max_kv_fraction": FAMILIES[family].get("max_kv_fraction", MAX_KV_FRACTION),
    }


def meets(h: dict) -> bool:
    return bool(h["nats_acc_over_full_acc"] is not None and h["nats_acc_over_full_acc"] >= 0.95
                and h["nats_kv_fraction"] <= h.get("max_kv_fraction", MAX_KV_FRACTION)
                and h["nats_minus_best_baseline_acc"] >= 0.20
                and h["intervals_separate"])


def flat(h: dict, prefix: str) -> dict:
    """Scalars only (the README renders flat dicts as tables); intervals as "low-high" text."""
    out = {}
    for k, v in h.items():
        if isinstance(v, list):
            v = f"{v[0]:.3f}-{v[1]:.3f}"
        out[f"{prefix}.{k}"] = round(v, 4) if isinstance(v, float) else v
    out[f"{prefix}.targets_met"] = meets(h)
    return out


def markdown(points: list[dict]) -> str:
    lines = ["| family | workload | policy | budget | KV fraction | value | 95% interval | n |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        if p["policy"] in ("full", "nats") or p["at_nats_kv"]:
            budget = "-" if p["budget"] is None else f"{p['budget']:g}"
            lines.append(f"| {p['family']} | {p['workload']} | {label_of(p)} | {budget} | {p['kv_fraction']:.3f} | "
                         f"{p['value']:.3f} | {p['ci_low']:.3f}-{p['ci_high']:.3f} | {p['n']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    runner = Runner(args.seed)
    print(f"{'family':<10} {'workload':<20} {'policy':<26} {'budget':>7} {'kv frac':>8} {'value':>7} "
          f"{'95% interval':>15} {'n':>4}", flush=True)

    def log(p: dict) -> dict:
        budget = "-" if p["budget"] is None else f"{p['budget']:g}"
        print(f"{p['family']:<10} {p['workload']:<20} {label_of(p):<26} {budget:>7} {p['kv_fraction']:>8.3f} "
              f"{p['value']:>7.3f} {p['ci_low']:>7.3f}-{p['ci_high']:<7.3f} {p['n']:>4}", flush=True)
        return p

    points = []
    for family in args.families:
        points += run_family(runner, family, args, log)
    summary: dict = {"benchmark": "quality_vs_kv", "variant": args.variant,
                     "headline": {"family": args.families[0], "workload": args.headline[0]}}
    top = headline(points, args.families[0], args.headline[0])
    summary.update(top)
    summary["targets_met"] = meets(top)
    missed = []
    for family in args.families:
        sub = {}
        for label in args.headline:
            h = headline(points, family, label)
            if h is not None:
                sub.update(flat(h, label))
                if not meets(h):
                    missed.append(f"{family}/{label}")
        summary[family] = sub
    # every headline row (family x headline workload), not only the top-level one
    summary["all_headline_rows_met"] = not missed
    summary["headline_rows_missed"] = ", ".join(missed) or "none"
    summary.update({
        "n_headline": args.n_headline, "n_grid": args.n_grid, "n_lm": args.n_lm, "budgets": args.budgets,
        "workloads": args.workloads, "headline_workloads": args.headline, "lm_text_chunk_size": LM_CHUNK,
        "seed": args.seed, "threads": args.threads, "cells": runner.cells,
        "baselines": args.baselines, "protocols": args.protocols,
        "tiny_llama_adapter": args.adapter or FAMILIES["tiny_llama"]["nats"][1],
        "wall_s": round(time.perf_counter() - t0, 1),
        "markdown_tables": [markdown(points)],
        "points": points,
    })
    print()
    print(f"headline ({args.families[0]}, {args.headline[0]}): full {top['full_acc']:.3f}, nats {top['nats_acc']:.3f} "
          f"at KV {top['nats_kv_fraction']:.3f}, best baseline {top['best_baseline']} "
          f"{top['best_baseline_acc_at_nats_kv']:.3f}; intervals separate: {top['intervals_separate']}; "
          f"{runner.cells} cells in {summary['wall_s']} s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
