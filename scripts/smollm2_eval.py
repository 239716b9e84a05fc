"""Evaluate models/smollm2-135m-nats against the full cache and the baselines on passkey@1024 (chat template)
and write models/smollm2-135m-nats/eval.json (read by scripts/smollm2_card.py). Baselines run at the given
budgets under their default protocol.

    python scripts/smollm2_eval.py --n 10 --budgets 0.05
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ADAPTER = ROOT / "models" / "smollm2-135m-nats"
MODEL = "smollm2-135m-instruct"
BASELINES = ("tova", "h2o", "snapkv", "streaming_llm")


def wilson(k: float, n: int, z: float = 1.959963984540054) -> list[float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default="0.05")
    args = ap.parse_args()
    import torch

    from services.adapters import adapter_fields
    from services.declaration import DONE
    from services.evaluation import run_cell
    from services.models import load_model

    torch.set_num_threads(1)
    wp = {"context_length": 1024, "chat": "on"}
    rows = []

    def cell(handle, policy, params, extra=None):
        r = run_cell(handle, {"model": MODEL, "policy": policy, "policy_params": params, "workload": "passkey",
                              "workload_params": wp, "n_examples": args.n, "seed": args.seed, **(extra or {})})
        if r["status"] != DONE:
            raise SystemExit(f"{policy} {params}: {r['error']}")
        row = {"policy": policy, "budget": params.get("budget", "-"), "acc": r["accuracy"],
               "ci": wilson(r["accuracy"] * args.n, args.n), "kept": r["kept_fraction"],
               "kv_phys": r["kv_bytes_physical"]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    cell(load_model(MODEL, adapter=str(ADAPTER)), "nats", {}, adapter_fields(str(ADAPTER)))
    base = load_model(MODEL)
    cell(base, "full", {})
    for b in (float(x) for x in args.budgets.split(",")):
        for policy in BASELINES:
            cell(base, policy, {"budget": b})
    (ADAPTER / "eval.json").write_text(json.dumps({"n": args.n, "seed": args.seed, "workload": "passkey@1024 chat=on",
                                                   "rows": rows}, indent=2) + "\n")
    print(json.dumps({"eval": str(ADAPTER / "eval.json"), "rows": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
