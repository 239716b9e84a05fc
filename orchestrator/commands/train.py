"""`natsbench train CONFIG --out DIR [--steps N] [--resume]`: train the small GPT from scratch.

Progress goes to stderr; the last stdout line is one JSON object
`{steps, train_loss, val_loss, kept_fraction, seconds}`.
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML training config (e.g. configs/train_tiny_base.yaml)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: model.safetensors, config.json, metrics.jsonl, train_state/")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="stop after N optimizer steps in total (truncates the curriculum and the schedule)")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/train_state")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (overrides the config's `threads`)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from nats_model.train.config import ConfigError, load_config
    from nats_model.train.trainer import train

    if args.steps is not None and args.steps < 1:
        print(f"natsbench train: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"natsbench train: invalid config {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"natsbench train: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        cfg.threads = args.threads
    try:
        result = train(cfg, args.out, max_steps=args.steps, resume=args.resume, progress=not args.no_progress)
    except FileNotFoundError as exc:
        print(f"natsbench train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict()), flush=True)
    return 0
