"""The `natsbench` command line.

Each command lives in its own module `orchestrator.commands.<name>` exposing
`configure(parser)` (adds its options; must stay import-light) and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("orchestrator.commands.db", "create/upgrade the result store schema, or show its status"),
    "results": ("orchestrator.commands.results", "list stored runs as a table, JSON or CSV"),
    "sweep": ("orchestrator.commands.sweep", "run a sweep file on Ray and store every cell"),
    "submit": ("orchestrator.commands.submit", "submit a sweep as a Ray Job; --status/--logs of a job"),
    "eval": ("orchestrator.commands.eval", "run one cell (model x policy x workload) and print its record"),
    "train": ("orchestrator.commands.train", "train the small GPT from scratch (full attention or NAtS)"),
    "finetune": ("orchestrator.commands.finetune", "fine-tune NAtS type scorers by distillation, base frozen"),
    "model": ("orchestrator.commands.model", "import a GGUF model, or fetch a real model from the package index"),
    "adapter": ("orchestrator.commands.adapter", "import / check NAtS scorer adapters for Hugging Face models"),
    "workloads": ("orchestrator.commands.workloads", "list the workloads with their parameters and defaults"),
    "dashboard": ("orchestrator.commands.dashboard", "serve the Streamlit dashboard (read-only)"),
    "demo": ("orchestrator.commands.demo", "the `make demo` job: default sweep, table, dashboard"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="natsbench",
        description="Benchmark KV-cache policies (NAtS, full, StreamingLLM, H2O, SnapKV, TOVA) "
        "on shared workloads; results go to a SQL store.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
