"""Adding a metric is a declaration line, the measuring code and a migration: nothing else.

A fresh interpreter declares one more metric before anything imports the declaration, adds
its column the way a migration would, and then the store writes and reads it, the results
table shows it, the dashboard lists it and a failed cell's record carries it (as None).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys
    import services.declaration as d
    d.METRICS = (*d.METRICS, d.Metric("energy_j", "float", "J", "energy of the cell", "energy_j", False))
    d.METRIC_FIELDS = tuple(m.name for m in d.METRICS)
    d.METRIC = {m.name: m for m in d.METRICS}
    from sqlalchemy import text
    from services.store import Store, run_key
    url = sys.argv[1]
    config = {"model": "m", "policy": "full", "policy_params": {}, "workload": "passkey",
              "workload_params": {}, "n_examples": 1, "seed": 0, "device": "cpu", "dtype": "float32"}
    with Store(url) as store:
        store.upgrade()
        with store._engine.begin() as conn:  # what the metric's migration does
            conn.execute(text("ALTER TABLE runs ADD COLUMN energy_j FLOAT"))
        store.record({**config, "run_key": run_key(config), "sweep": "s", "status": "done", "error": None,
                      "energy_j": 1.5})
        [run] = store.runs()
    from orchestrator.commands import results
    from dashboard import data
    from services.evaluation import run_cell
    failed = run_cell(None, {"policy": "full"})
    print(json.dumps({"stored": run["energy_j"],
                      "table_header": "energy_j" in results.format_table([run]).splitlines()[0],
                      "dashboard": "energy_j" in data.METRICS,
                      "frame": float(data.records_frame([run])["energy_j"].iloc[0]),
                      "failed_record_has_it": "energy_j" in failed and failed["energy_j"] is None}))
""")


def test_a_new_metric_needs_only_its_declaration_and_a_migration(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    out = subprocess.run([sys.executable, "-c", SCRIPT, url], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"stored": 1.5, "table_header": True, "dashboard": True, "frame": 1.5,
                      "failed_record_has_it": True}
