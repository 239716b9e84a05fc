"""`natsbench adapter`: NAtS scorer adapters for Hugging Face models (nats_model.adapter).

- `natsbench adapter import FILE.pth --base BASE_DIR --out DIR [--window 256] [--chunk-size 1]
  [--global-bias 0.1] [--lam 3e-7]`: convert the scorers the NAtS authors published (a torch `.pth`
  dict, keys `layers.{i}.self_attn.proj_layer.weight`, optionally `model.`-prefixed) into an adapter
  folder for the base model in BASE_DIR. Loaded with `torch.load(weights_only=True)` only.
- `natsbench adapter check DIR [--base BASE_DIR]`: read an adapter (and check it against a base).

The last stdout line is one JSON object (the adapter config, its hash and folder). Bad input (a
missing file, a refused pickle, a wrong shape, another base) -> one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="adapter_command", metavar="ACTION")
    imp = sub.add_parser("import", help="convert the NAtS authors' published .pth scorers into an adapter folder",
                         description="Convert the NAtS authors' published .pth scorers into an adapter folder.")
    imp.add_argument("file", metavar="FILE.pth", help="torch .pth dict of layers.{i}.self_attn.proj_layer.weight")
    imp.add_argument("--base", required=True, metavar="BASE_DIR", help="the local Hugging Face base model folder")
    imp.add_argument("--out", required=True, metavar="DIR", help="adapter folder to write")
    imp.add_argument("--window", type=int, default=256, help="sliding window W (published: 256)")
    imp.add_argument("--chunk-size", type=int, default=1, help="chunk size C, 1 = token types (published: 1)")
    imp.add_argument("--global-bias", type=float, default=0.1, help="added to the Global logit (published: 0.1)")
    imp.add_argument("--lam", type=float, default=3e-7, help="the lambda it was trained with (published: 3e-7)")
    chk = sub.add_parser("check", help="read an adapter folder and check it against a base model",
                         description="Read an adapter folder and check it against a base model.")
    chk.add_argument("dir", metavar="DIR", help="adapter folder")
    chk.add_argument("--base", default=None, metavar="BASE_DIR", help="base model folder to check against")


def _fail(message: str) -> int:
    print(f"natsbench adapter: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from nats_model import adapter

    action = getattr(args, "adapter_command", None)
    if action is None:
        return _fail("choose an action: import | check")
    try:
        if action == "import":
            if args.window < 0:
                return _fail(f"--window must be an int >= 0, got {args.window}")
            if args.chunk_size < 1:
                return _fail(f"--chunk-size must be an int >= 1, got {args.chunk_size}")
            cfg = adapter.import_published(args.file, args.base, args.out, window=args.window,
                                           chunk_size=args.chunk_size, global_bias=args.global_bias, lam=args.lam)
            folder = args.out
            print(f"wrote {folder}: {cfg.num_layers} layer scorers for {cfg.base_model_type} "
                  f"(W={cfg.window}, chunk {cfg.chunk_size}, Global bias {cfg.global_bias})", file=sys.stderr)
        else:
            cfg, _ = adapter.load_adapter(args.dir, args.base)
            folder = args.dir
    except ValueError as exc:
        return _fail(str(exc).splitlines()[0])
    print(json.dumps({"adapter": str(folder), "adapter_sha256": adapter.adapter_hash(folder), **cfg.to_json()}))
    return 0
