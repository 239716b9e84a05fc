"""A realistic set of run records for the dashboard tests (plain dicts, DESIGN.md run fields).

Two sweeps: `tiny-main` (one model; six policies x budgets x three workloads, including
`lm_text` with perplexity instead of accuracy, and one failed run) and `tiny-running`
(a sweep still in progress: done, running and pending runs). Metrics follow simple
monotone rules with noise, so accuracy grows with the kept fraction and KV bytes with
the context length, as in a real sweep.
"""

from __future__ import annotations

import math
import random

MODEL = "gpt-tiny-nats"
POLICIES = ("full", "nats", "streaming_llm", "h2o", "snapkv", "tova")
BUDGETS = (0.125, 0.25, 0.5)
CONTEXTS = (256, 512, 1024)
FAILED_ERROR = "RuntimeError: KV cache capacity 0 < 1 token (budget too small for tova at 256 tokens)"
ENV = {"python": "3.11", "torch": "2.13.0+cpu", "device": "cpu", "host": "test-host", "git_commit": "abc1234"}


def _record(sweep: str, policy: str, budget: float | None, workload: str, ctx: int, seed: int,
            rng: random.Random, status: str = "done", model: str = MODEL) -> dict:
    kept = 1.0 if budget is None else (budget * 0.8 if policy == "nats" else budget)
    full_bytes = 2 * 2 * 4 * 32 * ctx * 4  # layers * (k, v) * heads * head_dim * tokens * fp32
    quality = 1.0 if policy == "full" else (min(0.99, 0.86 + 0.4 * kept) if policy == "nats" else 0.75 + 0.2 * kept)
    params = {} if budget is None else {"budget": budget}
    wparams = {"context_length": ctx, "n_examples": 8}
    config = {"model": model, "policy": policy, "policy_params": params, "workload": workload,
              "workload_params": wparams, "n_examples": 8, "seed": seed, "device": "cpu", "dtype": "float32"}
    rec = {
        **config, "sweep": sweep, "budget": budget,
        "status": status, "error": None, "attempts": 1, "environment": ENV, "config": config,
        "accuracy": None, "kv_bytes_physical": None, "kv_bytes_full": None, "kept_fraction": None,
        "ttft_s": None, "tpot_s": None, "tokens_per_s": None, "peak_memory_bytes": None, "extras": {},
    }
    if status != "done":
        return rec
    tpot = 0.0012 + 0.0000008 * ctx * kept + rng.uniform(0, 0.0002)
    rec.update({
        "kv_bytes_physical": int(full_bytes * kept * 1.05) if budget else full_bytes,
        "kv_bytes_full": full_bytes, "kept_fraction": round(kept, 4),
        "ttft_s": 0.01 * ctx / 256 + rng.uniform(0, 0.002), "tpot_s": tpot, "tokens_per_s": 1.0 / tpot,
        "peak_memory_bytes": 50_000_000 + full_bytes,
    })
    if workload == "lm_text":
        ppl = round(3.2 / quality + rng.uniform(0, 0.05), 3)
        rec["extras"] = {"ppl": ppl, "nll": round(math.log(ppl), 4), "examples": [{"id": "lm_text-0", "score": None}]}
    elif workload == "kv_recall":  # as on the shipped models: not solved even by the full cache
        rec["accuracy"] = round(max(0.0, 0.05 * quality + rng.uniform(-0.03, 0.03)), 3)
    else:
        rec["accuracy"] = round(min(1.0, quality * (1.0 - ctx / 8192) + rng.uniform(-0.03, 0.03)), 3)
    return rec


def fixture_records(seed: int = 0) -> list[dict]:
    """Every record of both sweeps: 84 records, 83 distinct cells (81 done incl. one shared by
    both sweeps, 1 failed, 1 running, 1 pending)."""
    rng = random.Random(seed)
    out = []
    for policy in POLICIES:
        for budget in (None,) if policy == "full" else BUDGETS:
            for ctx in CONTEXTS:
                out.append(_record("tiny-main", policy, budget, "passkey", ctx, 0, rng))
            out.append(_record("tiny-main", policy, budget, "kv_recall", 512, 0, rng))
            out.append(_record("tiny-main", policy, budget, "lm_text", 512, 0, rng))
    failed = _record("tiny-main", "tova", 0.125, "passkey", 256, 1, rng, status="failed")
    failed["error"], failed["attempts"] = FAILED_ERROR, 3
    failed["extras"] = {"traceback": "Traceback (most recent call last):\n  ...\n" + FAILED_ERROR}
    out.append(failed)
    for i, policy in enumerate(("full", "nats", "h2o")):
        # the done one is the same cell as in tiny-main (a run shared by two sweeps); seed 7 keeps
        # the running / pending cells new
        out.append(_record("tiny-running", policy, None if policy == "full" else 0.25, "passkey", 512,
                           0 if i == 0 else 7, rng, status=("done", "running", "pending")[i]))
    return out


OTHER_MODELS = ("tiny-base", "tiny-nats-ft", "tiny-nats-scratch")  # sorted after MODEL


def other_model_records(seed: int = 1) -> list[dict]:
    """Sweep `tiny-models`: three more models (full, nats, h2o at 0.25 on passkey at three
    contexts), so the per-model panels of the latency view have four models to lay out."""
    rng = random.Random(seed)
    return [_record("tiny-models", policy, None if policy == "full" else 0.25, "passkey", ctx, 0, rng, model=model)
            for model in OTHER_MODELS for policy in ("full", "nats", "h2o") for ctx in CONTEXTS]


def fill_store(url: str, records: list[dict] | None = None) -> list[dict]:
    """Write the fixture into the store at `url` through the Store API; returns the records.

    `records` defaults to `fixture_records()`. Finished runs go through `record`, the
    in-progress sweep through `ensure_runs` (+ `claim` for the running one), and an empty sweep
    through `ensure_sweep`.
    """
    from services.store import Store, run_key

    records = fixture_records() if records is None else records
    with Store(url) as store:
        store.upgrade()
        store.ensure_sweep("tiny-empty", {"note": "registered, no runs yet"})
        for rec in records:
            if rec["status"] in ("done", "failed"):
                store.record(rec)  # False for a cell another sweep already finished (shared run)
            else:
                store.ensure_runs(rec["sweep"], [rec["config"]])
                if rec["status"] == "running":
                    assert store.claim(run_key(rec["config"]))
            rec["run_key"] = run_key(rec["config"])
    return records


# The demo's kind of results (configs/demo.yaml): the baselines on tiny-base, NAtS on the two variants of
# tiny-base (tiny-nats-ft: fine-tuned from it; tiny-llama-base + tiny-llama-nats: converted from it, with an
# adapter), perplexity of tiny-nats-scratch (its own base). On niah_multikey NAtS dominates (near full-cache
# accuracy at the fewest bytes, the baselines far below); on passkey @512 it is dominated (snapkv at 0.1 keeps
# fewer bytes and scores higher), so a test can tell "on the front" from "always flagged".
DEMO_ADAPTER = "models/tiny-llama-nats"
DEMO_BASELINES = ("streaming_llm", "h2o", "snapkv", "tova")
DEMO_NATS = (("tiny-nats-ft", None), ("tiny-llama-base", DEMO_ADAPTER))


def _demo_record(model: str, adapter: str | None, policy: str, budget: float | None, workload: str, ctx: int,
                 kept: float, accuracy: float | None, *, compress: str | None = None, ppl: float | None = None,
                 recorded_base: bool = False) -> dict:
    full_bytes = 2 * 3 * 4 * 32 * ctx * 4  # layers * (k, v) * heads * head_dim * tokens * fp32
    params = {} if budget is None else {"budget": budget}
    wparams = {"context_length": ctx, **({"num_keys": 2} if workload == "niah_multikey" else {})}
    config = {"model": model, "policy": policy, "policy_params": params, "workload": workload,
              "workload_params": wparams, "n_examples": 50, "seed": 0, "device": "cpu", "dtype": "float32",
              **({"adapter": adapter} if adapter else {}), **({"compress": compress} if compress else {})}
    extras: dict = {} if ppl is None else {"ppl": ppl}
    if recorded_base:  # a run of the new code: the base as services.model_base recorded it
        from services.model_base import base_model

        extras["model_info"] = {"kind": "hf" if adapter else "gpt", "base_model": base_model(model, adapter)}
    tpot = 0.0012 + 0.0000008 * ctx * kept
    return {**config, "sweep": "demo", "budget": budget, "status": "done", "error": None, "attempts": 1,
            "environment": ENV, "config": config, "accuracy": accuracy,
            "kv_bytes_physical": int(full_bytes * kept), "kv_bytes_full": full_bytes, "kept_fraction": kept,
            "ttft_s": 0.01 * ctx / 256, "tpot_s": tpot, "tokens_per_s": 1 / tpot, "peak_memory_bytes": None,
            "extras": extras}


def demo_records() -> list[dict]:
    """Records shaped like `make demo`'s (see above): 4 task settings x (full + 4 baselines x 2 budgets
    + 2 NAtS variants) + snapkv's context protocol at 0.25 + tiny-nats-scratch on lm_text."""
    out = []
    for workload in ("passkey", "niah_multikey"):
        for ctx in (512, 1024):
            hard = workload == "niah_multikey"
            out.append(_demo_record("tiny-base", None, "full", None, workload, ctx, 1.0, 1.0 if not hard else 0.96))
            for i, policy in enumerate(DEMO_BASELINES):
                for budget in (0.1, 0.25):
                    acc = (0.3 + 0.4 * budget + 0.02 * i) if hard else min(1.0, 0.55 + 1.6 * budget + 0.03 * i)
                    out.append(_demo_record("tiny-base", None, policy, budget, workload, ctx, budget, round(acc, 3)))
            out.append(_demo_record("tiny-base", None, "snapkv", 0.25, workload, ctx, 0.25,
                                    0.5 if hard else 1.0, compress="context"))
            for j, (model, adapter) in enumerate(DEMO_NATS):
                kept = (0.07 + 0.01 * j) if hard or ctx == 1024 else 0.14  # passkey @512: more than snapkv@0.1
                acc = (0.93 + 0.03 * j) if hard or ctx == 1024 else 0.6
                out.append(_demo_record(model, adapter, "nats", None, workload, ctx, kept, acc,
                                        recorded_base=adapter is not None))
    for policy, kept, ppl in (("full", 1.0, 3.1), ("nats", 0.2, 3.3)):
        out.append(_demo_record("tiny-nats-scratch", None, policy, None, "lm_text", 512, kept, None, ppl=ppl))
    return out


# the settings where the demo fixture's NAtS runs dominate the baselines of their base
DEMO_NATS_DOMINATES = ("niah_multikey @512", "niah_multikey @1024", "passkey @1024")
