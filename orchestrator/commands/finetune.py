"""`natsbench finetune CONFIG --out DIR [--steps N] [--resume]`: fine-tune NAtS type scorers.

The base model is frozen; only the scorers learn, by distillation from the same weights with full
attention (see `nats_model.train.finetune`). Progress goes to stderr; the last stdout line is one
JSON object `{steps, loss, kept_fraction, seconds}`.
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML fine-tuning config (e.g. configs/finetune_tiny_nats.yaml)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: model.safetensors, config.json, metrics.jsonl, train_state/")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="stop after N optimizer steps in total (truncates the stages and the schedule)")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/train_state")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from nats_model.train.config import ConfigError
    from nats_model.train.finetune import finetune
    from nats_model.train.finetune_config import load_finetune_config

    if args.steps is not None and args.steps < 1:
        print(f"natsbench finetune: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    try:
        cfg = load_finetune_config(args.config)
    except ConfigError as exc:
        print(f"natsbench finetune: invalid config {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        result = finetune(cfg, args.out, max_steps=args.steps, resume=args.resume, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"natsbench finetune: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict()), flush=True)
    return 0
