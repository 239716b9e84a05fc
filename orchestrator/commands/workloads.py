"""`natsbench workloads`: list every workload with its parameters and defaults.

`--format table` (default) prints one block per workload; `--format json` prints one JSON list
(name, description, metric, params: name, type, default, allowed, help) on the last line.
"""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="table", choices=["table", "json"],
                        help="table (default) or json (one list on the last line)")


def _default(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + '..."'


def format_table(workloads: list[dict]) -> str:
    lines: list[str] = []
    for w in workloads:
        lines.append(f"{w['name']}: {w['description']}  [score: {w['metric']}]")
        width = max((len(p["name"]) for p in w["params"]), default=0)
        for p in w["params"]:
            lines.append(f"  {p['name'].ljust(width)}  default {_default(p['default'])}; {p['allowed']}. {p['help']}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run(args: argparse.Namespace) -> int:
    from services import workloads

    listing = workloads.describe()
    if args.format == "json":
        print(json.dumps(listing))
    else:
        print(format_table(listing), end="")
    return 0
