"""Expand a validated sweep into cells, each with its stable run key, and decide what runs.

A cell is one (model, policy + params, workload + params, seed); its config is the plain dict
of docs/DESIGN.md and its `run_key` is `services.store.run_key(config)`, so the same cell of
the same code version always gets the same key (resume, idempotent writes). Cells are ordered
model-first, so a worker that holds a model finds its next cell next to it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from orchestrator.spec import SweepSpec, grid, normalize_policy_params, normalize_workload_params
from services.declaration import DONE, FAILED, PENDING, RUNNING  # noqa: F401 - re-exported for run.py


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """All cell configs of a sweep, model-major (then workload, policy, seed); parameter values are
    normalised by their declared types, so one cell has one run key. A model entry with an
    `adapter` adds `adapter` and `adapter_sha256` (its content hash) to its cells' configs; a folder
    model adds `model_sha256` (its weights' hash, services.model_hash)."""
    from services.adapters import adapter_fields
    from services.declaration import check_compress
    from services.model_hash import model_fields

    configs: list[dict[str, Any]] = []
    for m in spec.models:
        adapter = adapter_fields(m.adapter)  # hashed once per model entry
        weights = model_fields(m.name)
        for w in spec.workloads:
            if w.models is not None and m.name not in w.models:
                continue
            for w_params in grid(w.params):
                w_params = normalize_workload_params(w.name, w_params)
                for p in spec.policies:
                    if p.models is not None and m.name not in p.models:
                        continue
                    for p_params, compress in itertools.product(grid(p.params), p.compress_values()):
                        p_params = normalize_policy_params(p.name, p_params)
                        compress = check_compress(p.name, compress)  # None: the policy's default
                        for seed in spec.seeds:
                            configs.append(
                                {
                                    "model": m.name,
                                    "policy": p.name,
                                    "policy_params": p_params,
                                    "compress": compress,
                                    "workload": w.name,
                                    "workload_params": w_params,
                                    "n_examples": w.examples,
                                    "seed": seed,
                                    "device": m.device,
                                    "dtype": m.dtype,
                                    **adapter,
                                    **weights,
                                }
                            )
    return configs


@dataclass
class Cell:
    """One unit of work: its run key, its config, and the status the store had before the run."""

    run_key: str
    config: dict[str, Any]
    status: str = PENDING

    @property
    def model_key(self) -> tuple[str, str, str, str | None]:
        """What a worker loads for this cell: base + adapter is another model than the base alone."""
        c = self.config
        return (c["model"], c["device"], c["dtype"], c.get("adapter"))


@dataclass
class Plan:
    """The cells of one sweep split into those to execute now and those skipped."""

    sweep: str
    cells: list[Cell]
    todo: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)


def build_cells(spec: SweepSpec) -> list[Cell]:
    """Cells with run keys; duplicate configs (the same grid listed twice, or `128` and
    `"128"` for one int parameter) collapse."""
    from services.store import run_key

    seen: dict[str, Cell] = {}
    for config in expand(spec):
        key = run_key(config)
        seen.setdefault(key, Cell(key, config))
    return list(seen.values())


def decide(sweep: str, cells: list[Cell], statuses: dict[str, str], rerun_failed: bool) -> Plan:
    """Skip done cells (and failed ones unless `rerun_failed`); pending/running cells run."""
    plan = Plan(sweep=sweep, cells=cells)
    for cell in cells:
        cell.status = statuses.get(cell.run_key, PENDING)
        if cell.status == DONE or (cell.status == FAILED and not rerun_failed):
            plan.skipped.append(cell)
        else:
            plan.todo.append(cell)
    return plan


def describe(config: dict[str, Any]) -> str:
    """Short human label of a cell: model | policy(params) | workload(params) | seed."""

    def fmt(d: dict[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in d.items())

    model = config["model"] + (f" + {config['adapter']}" if config.get("adapter") else "")
    compress = f" compress={config['compress']}" if config.get("compress") else ""
    return (
        f"{model} | {config['policy']}({fmt(config['policy_params'])}){compress} | "
        f"{config['workload']}({fmt(config['workload_params'])}) x{config['n_examples']} | "
        f"seed={config['seed']}"
    )


def format_plan(plan: Plan) -> str:
    """The `--dry-run` listing: one line per cell with its key prefix and what will happen."""
    lines = [f"sweep {plan.sweep}: {len(plan.cells)} cells, {len(plan.todo)} to run, "
             f"{len(plan.skipped)} skipped"]
    todo = {c.run_key for c in plan.todo}
    for c in plan.cells:
        action = "run " if c.run_key in todo else "skip"
        lines.append(f"  {action} {c.run_key[:12]} [{c.status:<7}] {describe(c.config)}")
    return "\n".join(lines)
