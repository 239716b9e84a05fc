"""`natsbench eval`: run one cell (model x policy x workload) and print its run record.

`--format json` (default) prints the record as one JSON object on the last line of stdout (a
short human summary goes to stderr); `--format table` prints the record's fields as a table.
`k=v` parameters are parsed as JSON when they parse (numbers, booleans, null, lists), else kept
as strings. Exit status: 0 when the cell is done, 1 when it failed while running, 2 for bad
input (unknown model, policy or workload, bad parameter), reported before anything runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from services.declaration import DONE, check_compress


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                        help="shipped model name (models/<name>), GPT checkpoint folder, local Hugging Face "
                        "folder, or a test model random:tiny-gpt | random:tiny-gpt-nats | random:tiny-llama")
    parser.add_argument("--adapter", default=None, metavar="DIR",
                        help="NAtS scorer adapter folder for a Hugging Face --model (natsbench finetune / "
                        "natsbench adapter import); the nats policy takes W / chunk size from it")
    parser.add_argument("--policy", required=True, metavar="NAME", help="KV policy (full, streaming_llm, h2o, ...)")
    parser.add_argument("--policy-param", action="append", default=[], metavar="K=V",
                        help="policy parameter, repeatable (e.g. budget=0.2)")
    parser.add_argument("--compress", default=None, metavar="PROTOCOL",
                        help="compression protocol: streaming (evict as tokens arrive), prompt (once, at the end "
                        "of the prompt) or context (once, at the end of the context, before the question); "
                        "default: the policy's own (README, 'Compression protocols')")
    parser.add_argument("--workload", required=True, metavar="NAME", help="workload (see `natsbench workloads`)")
    parser.add_argument("--workload-param", action="append", default=[], metavar="K=V",
                        help="workload parameter, repeatable (e.g. context_length=1024)")
    parser.add_argument("--n", type=int, default=5, metavar="N", help="number of examples (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the instances (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda if available, else cpu; default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="model dtype (default float32)")
    parser.add_argument("--format", default="json", choices=["json", "table"],
                        help="json: one object on the last line (default); table: human table")


def parse_kv(items: list[str], option: str) -> dict[str, Any]:
    """`["k=v", ...]` -> dict; values parsed as JSON when possible, else strings.
    ValueError naming the option for an item without `=` or a repeated key."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} expects K=V, got {item!r}")
        if key in out:
            raise ValueError(f"{option} {key!r} given twice")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _fail(message: str) -> int:
    print(f"natsbench eval: {message}", file=sys.stderr)
    return 2


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def format_table(record: dict) -> str:
    """The record as `field  value` lines (extras summarised, per-example details left out)."""
    rows = [(k, _fmt(v)) for k, v in record.items() if k not in ("extras", "environment")]
    extras = {k: v for k, v in (record.get("extras") or {}).items() if k not in ("examples", "traceback")}
    rows += [(f"extras.{k}", _fmt(v)) for k, v in extras.items()]
    env = record.get("environment") or {}
    rows += [(f"environment.{k}", _fmt(v)) for k, v in env.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _summary(record: dict) -> str:
    acc = record.get("accuracy")
    extras = record.get("extras") or {}
    model = record["model"] + (f" + {record['adapter']}" if record.get("adapter") else "")
    bits = [f"{model} / {record['policy']} / {record['workload']}: {record['status']}"]
    if record.get("error"):
        bits.append(record["error"])
    if record.get("compress"):
        bits.append(f"compress {record['compress']}")
    if acc is not None:
        bits.append(f"accuracy {acc:.3f}")
    if extras.get("ppl") is not None:
        bits.append(f"ppl {extras['ppl']:.3f}")
    if record.get("kept_fraction") is not None:
        bits.append(f"kept {record['kept_fraction']:.3f}")
    return ", ".join(bits)


def run(args: argparse.Namespace) -> int:
    try:
        policy_params = parse_kv(args.policy_param, "--policy-param")
        workload_params = parse_kv(args.workload_param, "--workload-param")
    except ValueError as exc:
        return _fail(str(exc))
    if args.n < 1:
        return _fail(f"--n must be >= 1, got {args.n}")
    if args.seed < 0:
        return _fail(f"--seed must be >= 0, got {args.seed}")

    from services import evaluation, models, workloads

    # bad input is reported before the model is loaded or anything runs
    try:
        workload = workloads.get(args.workload)
        workload.validate(workload_params)
        evaluation.build_policy(args.policy, policy_params)
        compress = check_compress(args.policy, args.compress, "--compress")
    except (ValueError, TypeError) as exc:
        return _fail(str(exc))
    if compress == "context" and not getattr(workload, "context_split", True):
        return _fail(f"--compress: workload {args.workload!r} has no question after its context; allowed: "
                     "streaming, prompt")
    if args.adapter is not None:  # another base, a wrong shape, a missing file: refused before loading
        from services.models import check_adapter_for_model

        try:
            check_adapter_for_model(args.model, args.adapter)
        except ValueError as exc:
            return _fail(str(exc).splitlines()[0])
    try:
        handle = models.load_model(args.model, device=args.device, dtype=args.dtype, adapter=args.adapter)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    try:  # lengths are measured in the model's tokens: e.g. a context too short for the task
        workloads.get(args.workload).instances(workload_params, args.n, args.seed, count_tokens=handle.count_tokens)
    except ValueError as exc:
        return _fail(str(exc))

    config = {"model": args.model, "policy": args.policy, "policy_params": policy_params,
              "workload": args.workload, "workload_params": workload_params, "n_examples": args.n,
              "seed": args.seed, "device": args.device, "dtype": args.dtype, "compress": compress}
    if handle.adapter is not None:
        config.update(adapter=handle.adapter, adapter_sha256=handle.adapter_sha256)
    record = evaluation.run_cell(handle, config)
    if args.format == "table":
        print(format_table(record))
    else:
        print(_summary(record), file=sys.stderr)
        print(json.dumps(record, default=str, allow_nan=False))
    return 0 if record.get("status") == DONE else 1
