"""Write models/smollm2-135m-nats/MODEL_CARD.md from what was measured; numbers are never typed by hand.

Inputs: the adapter folder (adapter_config.json, finetune_config.json, metrics.jsonl, `train_record.json`:
the command, wall time and machine of the training run, written by `--record` below, with a `stages` list when
the adapter was trained in stages, each continuing the last one through `nats.init_adapter`), the quality_vs_kv
results of the smollm2 family (benchmarks/results/quality_vs_kv_smollm2*.json: their `points`), and
`attempts.json` in the adapter folder when earlier attempts exist.

    python scripts/smollm2_card.py --record --command "natsbench finetune ..." --wall-s 3400   # once, after training
    python scripts/smollm2_card.py                                                           # the card
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = ROOT / "models" / "smollm2-135m-nats"
RESULTS = ROOT / "benchmarks" / "results"


def _machine() -> str:
    import os
    import sys

    sys.path.insert(0, str(ROOT))
    from services.environment import _cpu_name

    return f"{os.cpu_count()} cores ({_cpu_name()}), no GPU"


def _metrics() -> list[dict]:
    """The rows of the adapter's metrics.jsonl (training rows have a loss, validation rows do not)."""
    return [json.loads(x) for x in (ADAPTER / "metrics.jsonl").read_text().splitlines() if x.strip()]


def points_table(points: list[dict]) -> list[str]:
    lines = ["| workload | policy | protocol | budget | physical KV fraction | accuracy / ppl | 95% interval | n |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        budget = "-" if p.get("budget") is None else f"{p['budget']:g}"
        lines.append(f"| {p['workload']} | {p['policy']} | {p.get('compress', '-')} | {budget} | "
                     f"{p['kv_fraction']:.3f} | {p['value']:.3f} | {p['ci_low']:.3f}-{p['ci_high']:.3f} | {p['n']} |")
    return lines


def card() -> str:
    cfg = json.loads((ADAPTER / "adapter_config.json").read_text())
    train = json.loads((ADAPTER / "train_record.json").read_text())
    steps = [m for m in _metrics() if "loss" in m]
    last = steps[-1] if steps else {}
    out = ["# smollm2-135m-nats", "",
           "NAtS type scorers (the only trained weights) for the frozen SmolLM2-135M-Instruct "
           "(`natsbench model fetch smollm2-135m-instruct`). Written by `scripts/smollm2_card.py`.", "",
           "| field | value |", "|---|---|",
           f"| base | models/smollm2-135m-instruct (weights sha256 `{cfg['base_sha256'][:16]}...`) |",
           f"| window W / chunk / Global bias / lambda | {cfg['window']} / {cfg['chunk_size']} / "
           f"{cfg['global_bias']} / {cfg['lam']} |",
           f"| steps (last stage) | {cfg['steps']} |",
           f"| last logged loss / kept fraction | {last.get('loss', float('nan')):.4f} / "
           f"{last.get('kept_fraction', float('nan')):.4f} (step {last.get('step')}, T={last.get('seq_len')}) |",
           f"| machine | {train['machine']} |", ""]
    stages = train.get("stages") or [{"config": train["config"], "command": train["command"], "wall_s": train["wall_s"],
                                      "steps": cfg["steps"]}]
    out += ["## Training stages (each continues the previous stage's scorers: `nats.init_adapter`)", "",
            "| stage | config | command | steps | wall time |", "|---|---|---|---|---|"]
    for i, st in enumerate(stages, 1):
        out.append(f"| {i} | `{st['config']}` | `{st['command']}` | {st['steps']} | {st['wall_s']:.0f} s |")
    out.append("")
    quick = ADAPTER / "eval.json"
    if quick.is_file():
        ev = json.loads(quick.read_text())
        out += ["## Evaluation: passkey@1024 through the chat template (scripts/smollm2_eval.py)", "",
                f"One `services.evaluation.run_cell` per row, n={ev['n']} examples, seed {ev['seed']} (the training "
                "draws its examples from its own seeds), fp32, 1 thread. `kept` is the kept fraction of the tokens "
                "seen (mean over layers, heads); `KV bytes` the physical K+V bytes the cache held at the end.", "",
                "| policy | budget | accuracy | 95% Wilson interval | kept | KV bytes |", "|---|---|---|---|---|---|"]
        for r in ev["rows"]:
            out.append(f"| {r['policy']} | {r.get('budget', '-')} | {r['acc']:.2f} | {r['ci'][0]:.2f}-{r['ci'][1]:.2f} | "
                       f"{r['kept']:.3f} | {r['kv_phys']:,} |")
        out.append("")
    for path in sorted(RESULTS.glob("quality_vs_kv_smollm2*.json")):
        res = json.loads(path.read_text())
        summary = res.get("summary") or {}
        out += [f"## Evaluation: {path.name} (benchmarks/quality_vs_kv.py)", "",
                f"Command: `{res.get('command', '')}`; seed {summary.get('seed')}, fp32, {summary.get('threads')} "
                "thread(s). Baselines at NAtS's physical KV fraction under every protocol they support.", ""]
        out += points_table(summary.get("points", []))
        out.append("")
    attempts = ADAPTER / "attempts.json"
    if attempts.is_file():
        out += ["## Attempts that did not ship", ""]
        for a in json.loads(attempts.read_text()):
            out.append(f"- {a}")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="write train_record.json (after training)")
    ap.add_argument("--command", default=None)
    ap.add_argument("--config", default="configs/finetune_smollm2_nats.yaml")
    ap.add_argument("--wall-s", type=float, default=None)
    ap.add_argument("--append-stage", action="store_true",
                    help="with --record: add a stage to the recorded one (wall time from metrics.jsonl if not given)")
    ap.add_argument("--prior-steps", type=int, default=None, help="with --append-stage: the recorded stage's steps")
    args = ap.parse_args()
    if args.record:
        record = {"command": args.command, "config": args.config, "wall_s": args.wall_s, "machine": _machine()}
        if args.append_stage:  # a stage continuing the recorded one (nats.init_adapter): keep both
            old = json.loads((ADAPTER / "train_record.json").read_text())
            if record["wall_s"] is None:  # the stage's own clock: the last metrics row
                record["wall_s"] = [m for m in _metrics() if "step" in m][-1]["seconds"]
            prior = old.get("stages") or [{k: old[k] for k in ("config", "command", "wall_s")} | {"steps": args.prior_steps}]
            stage = {"config": args.config, "command": args.command, "wall_s": record["wall_s"],
                     "steps": json.loads((ADAPTER / "adapter_config.json").read_text())["steps"]}
            record = {**record, "stages": prior + [stage], "wall_s": sum(st["wall_s"] for st in prior + [stage])}
        (ADAPTER / "train_record.json").write_text(json.dumps(record, indent=2) + "\n")
    (ADAPTER / "MODEL_CARD.md").write_text(card())
    print(json.dumps({"card": str(ADAPTER / "MODEL_CARD.md")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
