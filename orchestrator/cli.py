"""The `natsbench` command line.

Each command lives in its own module `orchestrator.commands.<name>` exposing
`configure(parser)` (adds its options; must stay import-light) and `run(args) -> int`.
A command whose module is not built yet still appears in `--help` and exits 2 with one
line naming the issue that brings it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help, issue that brings it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "db": ("orchestrator.commands.db", "create/upgrade the result store schema, or show its status", "#2"),
    "results": ("orchestrator.commands.results", "list stored runs as a table, JSON or CSV", "#2"),
    "sweep": ("orchestrator.commands.sweep", "run a sweep file on Ray and store every cell", "#6"),
    "submit": ("orchestrator.commands.submit", "submit a sweep as a Ray Job; --status/--logs of a job", "#6"),
    "eval": ("orchestrator.commands.eval", "run one cell (model x policy x workload) and print its record", "#5"),
    "train": ("orchestrator.commands.train", "train the small GPT from scratch (full attention or NAtS)", "#3"),
    "finetune": ("orchestrator.commands.finetune", "fine-tune NAtS type scorers by distillation, base frozen", "#5"),
    "adapter": ("orchestrator.commands.adapter", "import / check NAtS scorer adapters for Hugging Face models", "#12"),
    "workloads": ("orchestrator.commands.workloads", "list the workloads with their parameters and defaults", "#5"),
    "dashboard": ("orchestrator.commands.dashboard", "serve the Streamlit dashboard (read-only)", "#7"),
    "demo": ("orchestrator.commands.demo", "the `make demo` job: default sweep, table, dashboard", "#6"),
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="natsbench",
        description="Benchmark KV-cache policies (NAtS, full, StreamingLLM, H2O, SnapKV, TOVA) "
        "on shared workloads; results go to a SQL store.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text, issue) in COMMANDS.items():
        module = _load(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        if module is None:
            p.set_defaults(_not_built=issue)
        else:
            module.configure(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_not_built", None):
        print(f"natsbench {args.command}: not built yet (arrives with issue {args._not_built})", file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
