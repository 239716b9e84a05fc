"""`natsbench demo`: what `make demo` runs.

The default sweep (`configs/demo.yaml`) on an in-process Ray bound to 127.0.0.1 into
`sqlite:///results/natsbench.sqlite`, then the comparison table (mean accuracy per policy and
budget for each workload, with the kept fraction and the physical KV bytes), then the
dashboard on 127.0.0.1:8501 until Ctrl-C, unless env `NO_DASHBOARD=1`. Done cells are skipped,
so a second `make demo` goes straight to the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from orchestrator.commands.common import DEFAULT_DB_URL, checked_db_url
from services.declaration import DONE

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEMO_CONFIG), help=f"sweep file (default {DEMO_CONFIG.name})")
    parser.add_argument("--db", metavar="URL", default=DEFAULT_DB_URL,
                        help=f"result store (default {DEFAULT_DB_URL}; the demo ignores $NATSBENCH_DB_URL)")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="worker actors (default: the sweep's)")
    parser.add_argument("--port", type=int, default=8501, help="dashboard port on 127.0.0.1 (default 8501)")


def _label(rec: dict[str, Any]) -> str:
    params = rec.get("workload_params") or {}
    return rec["workload"] + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def comparison_table(records: list[dict[str, Any]]) -> str:
    """Rows: model x policy x budget; columns: mean accuracy per workload cell, kept fraction,
    mean physical KV KiB. Failed cells show as `x`; lm_text cells show their perplexity."""
    workloads = sorted({_label(r) for r in records})
    groups: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        budget = (r.get("policy_params") or {}).get("budget")
        groups[(r["model"], r["policy"], "-" if budget is None else f"{budget:g}")][_label(r)].append(r)
    def short_label(label: str) -> str:  # "passkey(context_length=256,digits=5)" -> "passkey@256"
        rec = next(r for r in records if _label(r) == label)
        ctx = (rec.get("workload_params") or {}).get("context_length")
        return f"{rec['workload']}@{ctx}" if ctx is not None else rec["workload"]

    short = [short_label(w) for w in workloads]
    if len(set(short)) < len(short):  # other parameters vary too: show them
        short = [w.replace("context_length=", "n=") for w in workloads]
    short = [s[:18] for s in short]
    head = f"{'model':<18} {'policy':<14} {'budget':<6} " + " ".join(f"{s:>18}" for s in short)
    head += f" {'kept':>6} {'KV KiB':>8}"
    lines = [head, "-" * len(head)]
    for (model, policy, budget), by_w in sorted(groups.items()):
        cells, kept, kv = [], [], []
        for w in workloads:
            rs = by_w.get(w, [])
            ok = [r for r in rs if r.get("status") == DONE and r.get("accuracy") is not None]
            ppl = [r["extras"]["ppl"] for r in rs if r.get("status") == DONE and r.get("accuracy") is None
                   and (r.get("extras") or {}).get("ppl") is not None]
            if ppl:  # lm_text reports streaming perplexity, not accuracy
                cells.append(f"ppl {sum(ppl) / len(ppl):.2f}")
                continue
            cells.append("" if not rs else ("x" if not ok else f"{sum(r['accuracy'] for r in ok) / len(ok):.2f}"))
            kept += [r["kept_fraction"] for r in ok if r.get("kept_fraction") is not None]
            kv += [r["kv_bytes_physical"] for r in ok if r.get("kv_bytes_physical") is not None]
        kept_s = f"{sum(kept) / len(kept):.2f}" if kept else "-"
        kv_s = f"{sum(kv) / len(kv) / 1024:.1f}" if kv else "-"
        lines.append(f"{model[:18]:<18} {policy[:14]:<14} {budget:<6} " + " ".join(f"{c:>18}" for c in cells)
                     + f" {kept_s:>6} {kv_s:>8}")
    return "\n".join(lines)


def missing_models(spec: Any) -> list[str]:
    """Model names of the sweep that are neither `random:` test models, folders, nor shipped
    reference models (models/<name>/config.json)."""
    models_dir = Path(__file__).resolve().parents[2] / "models"
    return [m.name for m in spec.models
            if not m.name.startswith("random:") and not Path(m.name).expanduser().is_dir()
            and not (models_dir / m.name / "config.json").is_file()]


def _fetch_real_models(config: str) -> None:
    """Fetch (cached) every fetchable real model the demo file names, by name or as models/<name>, that is
    not in models/ yet; a failed fetch is one line, and the sweep then runs without that model."""
    from nats_model.config_files import ConfigFileError, read_config_file
    from services import model_registry

    try:
        data = read_config_file(config)
    except ConfigFileError:
        return  # load_spec reports it
    entries = data.get("models") if isinstance(data, dict) else None
    names = {str(m.get("name", "")).removeprefix("models/") for m in entries or [] if isinstance(m, dict)}
    for name in sorted(names & set(model_registry.FETCHABLE)):
        if not model_registry.is_fetched(name):
            try:
                model_registry.fetch(name)
            except model_registry.FetchError as exc:
                print(f"natsbench demo: could not fetch {name}: {exc}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from orchestrator.plan import build_cells
    from orchestrator.run import open_store, run_sweep
    from orchestrator.spec import SpecError, load_spec

    _fetch_real_models(args.config)  # before validation: an adapter is checked against its base's files
    try:
        spec = load_spec(args.config)
    except SpecError as exc:
        print(f"natsbench demo: {exc}", file=sys.stderr)
        return 2
    missing = missing_models(spec)
    if missing:
        print(f"natsbench demo: model(s) {', '.join(missing)} not found: neither a folder, a shipped model "
              "(models/<name>/config.json) nor a random: test model", file=sys.stderr)
        present = [m for m in spec.models if m.name not in missing]
        if not present:
            print("natsbench demo: no model of the demo sweep exists, nothing to run", file=sys.stderr)
            return 2
        print(f"natsbench demo: running the sweep with {', '.join(m.name for m in present)} only",
              file=sys.stderr)
        spec = spec.model_copy(update={"models": present})
    from services.store import StoreError

    if checked_db_url(args.db, "demo") is None:
        return 2
    if args.db.startswith("sqlite:///results/"):
        Path("results").mkdir(exist_ok=True)
    try:
        store = open_store(args.db)
    except StoreError as exc:  # another application's database, unreachable server: nothing written
        print(f"natsbench demo: --db: {exc}", file=sys.stderr)
        return 2
    print(f"natsbench demo: sweep {spec.name} ({args.config}) into {args.db}", file=sys.stderr)
    result = run_sweep(spec, args.db, workers=args.workers, store=store)
    # Only this file's cells: a sweep keeps the rows of cells an earlier version of the file had.
    keys = {cell.run_key for cell in build_cells(spec)}
    print(comparison_table([r for r in store.runs(spec.name) if r["run_key"] in keys]))
    print(json.dumps(result.summary()))
    sys.stdout.flush()
    if result.interrupted:
        return 130
    if os.environ.get("NO_DASHBOARD") == "1":
        return 1 if result.failed else 0
    from orchestrator.commands import dashboard

    print(f"natsbench demo: dashboard on http://127.0.0.1:{args.port} (Ctrl-C stops)", file=sys.stderr)
    return dashboard.serve(args.db, host="127.0.0.1", port=args.port)
