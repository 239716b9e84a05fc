"""A controllable cell runner for the orchestrator tests (the `services.evaluation` interface).

Models named `fake:<options>` load instantly; the options (comma-separated `key=value`, part
of the model name so the sweep file stays valid) steer every cell of that model: `sleep=S`
sleeps S seconds, `explode_seed=N` makes the cells with seed N raise, `crash_seed=N` makes
the worker process of the cells with seed N exit at once (a dying actor), `tag=...` only makes the
name unique per test. Otherwise a cell returns a done record whose accuracy is a pure function
of the config. Every call appends one JSON line (model, config,
pid) to the file named by env `NATSBENCH_FAKE_LOG`, so tests can count executions.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from typing import Any


def check_model(name_or_path: str) -> None:
    """What the driver calls for every model before Ray starts: only `fake:*` names exist here."""
    if not name_or_path.startswith("fake:"):
        raise ValueError(f"fake runner loads only 'fake:*' models, got {name_or_path!r}")


def load_model(name_or_path: str, device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    if not name_or_path.startswith("fake:"):
        raise ValueError(f"fake runner loads only 'fake:*' models, got {name_or_path!r}")
    options = dict(part.split("=", 1) for part in name_or_path[5:].split(",") if "=" in part)
    return {"name": name_or_path, "device": device, "dtype": dtype, "options": options}


def _log(config: dict[str, Any]) -> None:
    path = os.environ.get("NATSBENCH_FAKE_LOG")
    if path:
        line = json.dumps({"model": config["model"], "config": config, "pid": os.getpid()}, sort_keys=True)
        with open(path, "a") as fh:
            fh.write(line + "\n")


def run_cell(handle: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    options = handle["options"]
    _log(config)
    time.sleep(float(options.get("sleep", 0.0)))
    if str(config["seed"]) == options.get("crash_seed"):
        os._exit(1)
    if str(config["seed"]) == options.get("explode_seed"):
        raise RuntimeError(f"boom: cell asked to explode (seed {config['seed']})")
    record = dict(config)
    digest = zlib.crc32(json.dumps(config, sort_keys=True).encode())
    record.update(
        status="done",
        error=None,
        accuracy=(digest % 1000) / 1000.0,
        kv_bytes_physical=1024 * (1 + digest % 7),
        kv_bytes_full=8192,
        kept_fraction=(config.get("policy_params") or {}).get("budget") or 1.0,
        ttft_s=0.001,
        tpot_s=0.0005,
        tokens_per_s=2000.0,
        peak_memory_bytes=1 << 20,
        extras={"fake": True},
    )
    return record
