"""Write `MODEL_CARD.md` for a trained checkpoint from its own records (never hand-typed numbers).

Reads `config.json`, `train_config.json`, `metrics.jsonl` and a quick_eval results file (JSON
lines, one `nats_model.train.quick_eval` output per line) and renders the card.

    python -m nats_model.train.model_card models/tiny-base --name tiny-base \\
        --command "natsbench train configs/train_tiny_base.yaml --out models/tiny-base" \\
        --evals runs/tiny-base.evals.jsonl --wall-time-s 2460 --note "..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def from_scratch_section(result: dict) -> list[str]:
    """The from-scratch evaluation (the JSON line of `benchmarks/from_scratch.py`) as card lines:
    its table, the command that measured it and the paper's target, met or missed by how much."""
    nats_ppl, h2o_ppl = result["scratch_nats_ppl"], result["twin_h2o_12_5_ppl"]
    frac = result["scratch_nats_kv_fraction"]
    lo, hi = result["nats_minus_h2o_12_5_nll_ci95"]
    ppl_ok, frac_ok = nats_ppl <= h2o_ppl, frac <= 0.10
    lines = ["", "## From-scratch evaluation", "",
             f"Streaming perplexity on {result['n']} held-out windows of {result['context']} tokens (stdlib sources, "
             "the held-out split by file: text neither model trained on), token by token through the engine with "
             "the policy evicting after every token; 95% bootstrap intervals over windows. Measured by "
             f"`python benchmarks/from_scratch.py` (seed {result['seed']}, {result['bootstrap']} resamples).", "",
             *result["markdown_tables"][0].splitlines(), "",
             f"- the paper's claim as the target: NAtS perplexity <= H2O at 12.5% on the full twin, at a kept "
             f"fraction <= 0.10. Measured: {nats_ppl:.4f} vs {h2o_ppl:.4f} "
             f"({'met' if ppl_ok else f'MISSED by {nats_ppl - h2o_ppl:.4f} ({nats_ppl / h2o_ppl - 1:+.1%})'}; "
             f"paired 95% interval of the NLL difference [{lo:+.4f}, {hi:+.4f}] nats/token), kept fraction "
             f"{frac:.4f} ({'met' if frac_ok else f'MISSED by {frac - 0.10:.4f}'})."]
    return lines


def render(folder: Path, name: str, command: str, evals: list[dict], wall_time_s: float | None,
           notes: list[str], from_scratch: dict | None = None) -> str:
    model_cfg = json.loads((folder / "config.json").read_text())
    train_cfg = json.loads((folder / "train_config.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in rows if "val_loss" in r]
    last_val = vals[-1] if vals else {}
    steps = max((r["step"] for r in rows), default=0)
    size = (folder / "model.safetensors").stat().st_size
    n_params = size // 4
    lines = [f"# {name}", "",
             f"A byte-level GPT trained from scratch by natsbench ({model_cfg['attention']} attention).", "",
             "## Reproduce", "", "```", command, "```", "",
             "## Model", "", "```json", json.dumps({k: v for k, v in model_cfg.items()}, indent=1), "```",
             f"Weights: `model.safetensors`, {size / 1e6:.2f} MB (fp32, about {n_params:,} parameters).", "",
             "## Data and schedule", "",
             f"- real text: weight {train_cfg['data']['text_weight']} "
             f"({train_cfg['data']['text_dir'] or 'Python standard library sources, train split by file'})",
             ]
    for task, mix in train_cfg["data"]["tasks"].items():
        lines.append(f"- `{task}`: weight {mix['weight']}, params {json.dumps(mix['params'])}")
    if train_cfg["data"]["tasks"]:
        lines.append(f"- answer-focused loss: prompt tokens weigh {train_cfg['data']['prompt_loss_weight']}, "
                     "answer tokens 1")
    else:
        lines.append("- plain next-token cross-entropy on every position")
    lines.append("- curriculum:")
    for s in train_cfg["stages"]:
        mix = f", mix weights {json.dumps(s['weights'])}" if s.get("weights") else ""
        lam = f", lambda {s['lam']:g}" if s.get("lam") is not None else ""
        lines.append(f"  - {s['steps']} steps at {s['seq_len']} tokens (batch {s['batch_size']}){mix}{lam}")
    o = train_cfg["optim"]
    lines.append(f"- AdamW lr {o['lr']}, betas {o['betas']}, weight decay {o['weight_decay']}, warmup "
                 f"{o['warmup_steps']} then cosine to {o['min_lr_ratio']} x lr, clip {o['grad_clip']}")
    lines += ["", "## Training record", "", f"- optimizer steps: {steps}"]
    if wall_time_s is None and rows and all("seconds" in r for r in rows) \
            and all(a["seconds"] <= b["seconds"] for a, b in zip(rows, rows[1:], strict=False)):
        wall_time_s = rows[-1]["seconds"]  # one training segment: its own clock (a resume restarts it)
    if wall_time_s is not None:
        lines.append(f"- wall time: {wall_time_s / 60:.1f} min on the shared 2-core CPU "
                     f"(torch threads: {train_cfg.get('threads', 2)})")
    if last_val:
        keep = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in last_val.items()}
        what = (f"teacher-forced exact match at {train_cfg['eval']['seq_len']} tokens, "
                f"{train_cfg['eval']['examples_per_task']} examples per task" if train_cfg["data"]["tasks"]
                else f"held-out text loss, nats per byte, at {train_cfg['eval']['seq_len']} tokens")
        lines.append(f"- last validation ({what}): `{json.dumps(keep)}`")
    if from_scratch is not None:
        lines += from_scratch_section(from_scratch)
    if evals:
        lines += ["", "## Scores measured by quick_eval", "",
                  "Greedy generation with the full forward rerun per token (no cache engine); "
                  "`python -m nats_model.train.quick_eval`. Depths spread evenly over [0, 1]. "
                  "The team re-measures with `natsbench eval`.", "",
                  "| task | context tokens | params | n | accuracy | kept fraction |", "|---|---|---|---|---|---|"]
    for e in evals:
        lines.append(f"| {e['task']} | {e['context_length']} | {json.dumps(e.get('params', {}))} | {e['n']} | "
                     f"{e['accuracy']:.3f} | {e['kept_fraction']:.3f} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write MODEL_CARD.md for a trained checkpoint folder")
    ap.add_argument("folder")
    ap.add_argument("--name", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--evals", default=None, help="JSON lines of quick_eval outputs (may carry 'params')")
    ap.add_argument("--from-scratch", default=None,
                    help="a file holding the JSON line of benchmarks/from_scratch.py (adds its table)")
    ap.add_argument("--wall-time-s", type=float, default=None)
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    evals = ([json.loads(line) for line in Path(args.evals).read_text().splitlines() if line.strip()]
             if args.evals else [])
    scratch = json.loads(Path(args.from_scratch).read_text().strip().splitlines()[-1]) if args.from_scratch else None
    (folder / "MODEL_CARD.md").write_text(render(folder, args.name, args.command, evals, args.wall_time_s,
                                                 args.note, scratch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
