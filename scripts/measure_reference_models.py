"""Measure the shipped reference models with the product's own cell runner and write the results
into their model cards, so that no score in a card is typed by hand.

    python scripts/measure_reference_models.py [--write-cards]

Each row is one `services.evaluation.run_cell` (what `natsbench eval` and the sweep workers run):
the generation engine with the memory-true cache and the named policy. Prints a markdown table and,
as its last line, one JSON object with every row. `--write-cards` replaces the section
"## Measured by natsbench eval" of each model's MODEL_CARD.md with that model's rows.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from services.declaration import DONE
from services.evaluation import run_cell
from services.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Measured by natsbench eval"

# (model, policy, policy_params, workload, workload_params, n_examples)
CELLS = [
    ("tiny-base", "full", {}, "passkey", {"context_length": 1024}, 100),
    ("tiny-base", "full", {}, "niah_multikey", {"context_length": 512}, 50),
    ("tiny-base", "full", {}, "kv_recall", {"context_length": 1024}, 20),
    ("tiny-base", "full", {}, "variable_tracking", {"context_length": 1024}, 20),
    ("tiny-base", "streaming_llm", {"budget": 0.11}, "passkey", {"context_length": 1024}, 100),
    ("tiny-base", "h2o", {"budget": 0.11}, "passkey", {"context_length": 1024}, 100),
    ("tiny-base", "snapkv", {"budget": 0.11}, "passkey", {"context_length": 1024}, 100),
    ("tiny-base", "tova", {"budget": 0.11}, "passkey", {"context_length": 1024}, 100),
    ("tiny-nats-ft", "nats", {}, "passkey", {"context_length": 1024}, 100),
    ("tiny-nats-ft", "nats", {}, "niah_multikey", {"context_length": 512}, 50),
    ("tiny-nats-scratch", "nats", {}, "passkey", {"context_length": 1024}, 20),
]


def measure(cells=CELLS, seed: int = 1) -> list[dict]:
    rows, handles = [], {}
    for model, policy, pparams, workload, wparams, n in cells:
        if model not in handles:
            handles[model] = load_model(model)
        rec = run_cell(handles[model], {"model": model, "policy": policy, "policy_params": pparams,
                                        "workload": workload, "workload_params": wparams,
                                        "n_examples": n, "seed": seed})
        rows.append({"model": model, "policy": policy, "policy_params": pparams, "workload": workload,
                     "workload_params": wparams, "n_examples": n, "seed": seed, "status": rec["status"],
                     "error": rec.get("error"), "accuracy": rec.get("accuracy"),
                     "kept_fraction": rec.get("kept_fraction"), "kv_bytes_physical": rec.get("kv_bytes_physical"),
                     "kv_bytes_full": rec.get("kv_bytes_full"), "tpot_s": rec.get("tpot_s")})
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> list[str]:
    out = ["| model | policy | workload | n | accuracy | kept fraction | KV bytes held / full | TPOT ms |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pol = r["policy"] + (f" {json.dumps(r['policy_params'])}" if r["policy_params"] else "")
        wl = f"{r['workload']} {json.dumps(r['workload_params'])}"
        acc = _fmt(r["accuracy"], ".3f") if r["status"] == DONE else f"failed: {r['error']}"
        tpot = None if r["tpot_s"] is None else 1000 * r["tpot_s"]
        out.append(f"| {r['model']} | {pol} | {wl} | {r['n_examples']} | {acc} | {_fmt(r['kept_fraction'], '.3f')} "
                   f"| {_fmt(r['kv_bytes_physical'], 'd')} / {_fmt(r['kv_bytes_full'], 'd')} | {_fmt(tpot, '.2f')} |")
    return out


def write_card(model: str, rows: list[dict]) -> None:
    card = ROOT / "models" / model / "MODEL_CARD.md"
    text = card.read_text() if card.exists() else f"# {model}\n"
    body = "\n".join([SECTION, "",
                      "Written by `python scripts/measure_reference_models.py --write-cards` (each row one "
                      "`services.evaluation.run_cell`: the generation engine with the memory-true cache and the "
                      "policy; greedy; seed 1; this machine's CPU).", "", *table(rows), ""])
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
    text = pattern.sub(body.rstrip("\n"), text) if SECTION in text else text.rstrip("\n") + "\n\n" + body
    card.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-cards", action="store_true")
    args = ap.parse_args()
    rows = measure()
    print("\n".join(table(rows)))
    if args.write_cards:
        for model in dict.fromkeys(r["model"] for r in rows):
            write_card(model, [r for r in rows if r["model"] == model])
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
