"""`natsbench finetune CONFIG [--model DIR] --out DIR [--steps N] [--resume]`: fine-tune NAtS type scorers.

The base model is frozen; only the scorers learn, by distillation from the same weights with full
attention. Without `--model` the base is the config's `base:` GPT checkpoint and DIR gets a NAtS
GPT checkpoint (`nats_model.train.finetune`); with `--model` pointing at a local Hugging Face
Llama / Mistral / Qwen2 / Qwen3 folder, DIR gets an adapter folder (`adapter.safetensors` +
`adapter_config.json`, `nats_model.train.hf_finetune`). Progress goes to stderr; the last stdout
line is one JSON object `{steps, loss, kept_fraction, seconds}`.
"""

from __future__ import annotations

import argparse
import json
import sys

from nats_model.models.families import SUPPORTED_MODEL_TYPES


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML fine-tuning config (e.g. configs/finetune_tiny_nats.yaml)")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help=f"a local Hugging Face model folder ({', '.join(SUPPORTED_MODEL_TYPES)}) or a model in models/ "
                             "by name (e.g. smollm2-135m-instruct) to train scorers for; the output is then an adapter folder (default: the config's GPT `base`)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: model.safetensors + config.json (GPT) or adapter.safetensors + "
                             "adapter_config.json (--model), metrics.jsonl, train_state/")
    parser.add_argument("--device", default=None, metavar="DEV",
                        help="--model only: cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="--model only: dtype of the frozen base (the scorers train in float32)")
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
        if args.model is not None:
            from nats_model.train.hf_finetune import finetune_hf

            if args.device is not None and not (args.device == "cpu" or args.device.startswith("cuda")):
                raise ValueError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
            from pathlib import Path

            from services.paths import MODELS_DIR

            # a folder as given, or a model in models/ by name (smollm2-135m-instruct); finetune_hf checks the folder
            model_dir = Path(args.model).expanduser()
            if not model_dir.is_dir() and (MODELS_DIR / args.model).is_dir():
                model_dir = MODELS_DIR / args.model
            result = finetune_hf(cfg, str(model_dir), args.out, max_steps=args.steps, resume=args.resume,
                                 progress=not args.no_progress, device=args.device, dtype=args.dtype)
        else:
            if args.device is not None or args.dtype != "float32":
                raise ValueError("--device / --dtype apply to Hugging Face models (--model DIR) only")
            result = finetune(cfg, args.out, max_steps=args.steps, resume=args.resume,
                              progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"natsbench finetune: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict()), flush=True)
    return 0
