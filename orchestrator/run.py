"""Dispatch a planned sweep to `PolicyWorker` actors with `ray.wait` and store every record.

One cell is in flight per worker; a worker keeps the model it holds and takes the next cell of
that model, switching to the model with the most cells left per worker only when its own runs
out. A worker that dies is replaced and its cell goes back to the front of the queue, up to
`resources.max_attempts` attempts, then the cell is recorded failed. The driver is the only
writer of the store, for SQLite and PostgreSQL alike (one code path; a write is a few ms, and
workers on GPU hosts need no database access). Ctrl-C (or SIGTERM) puts the cells in flight
back to pending, kills the workers and returns with `interrupted=True`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.plan import DONE, FAILED, Cell, Plan, build_cells, decide
from orchestrator.spec import SweepSpec

# raylet_start_wait_time_s: the default 60 s is too short on a busy 2-core machine.
RAY_ENV_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                    "RAY_raylet_start_wait_time_s": "180"}
# Only for the in-process Ray: single-node mode, every Ray process on 127.0.0.1. Never when
# joining a cluster (it would refuse other nodes).
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass
class SweepResult:
    """What one `run_sweep` call did; `summary()` is the JSON last line of `natsbench sweep`."""

    sweep: str
    cells: int
    executed: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    interrupted: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)  # executed in this call
    plan_keys: list[str] = field(default_factory=list)  # every cell of the sweep file
    # per executed cell: driver seconds from dispatch to stored, worker seconds, store seconds
    timings: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "cells": self.cells, "executed": self.executed,
                "done": self.done, "failed": self.failed, "skipped": self.skipped}


def open_store(db_url: str) -> Any:
    """The result store at `db_url`, schema created or upgraded first."""
    from services.store import Store

    store = Store(db_url)
    store.upgrade()
    return store


def init_ray(address: str | None, num_cpus: float | None = None) -> None:
    """Connect to `address`, or start an in-process Ray on 127.0.0.1 (no dashboard)."""
    for key, value in (RAY_ENV_DEFAULTS if address else {**RAY_ENV_DEFAULTS, **LOCAL_ONLY_ENV}).items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = max(float(os.cpu_count() or 1), float(num_cpus or 0))
        ray.init(num_cpus=int(cpus + 0.999), include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")


def _counts(store: Any, plan: Plan) -> tuple[int, int]:
    keys = {c.run_key for c in plan.cells}
    done = failed = 0
    for row in store.runs(plan.sweep):
        if row["run_key"] in keys:
            done += row["status"] == DONE
            failed += row["status"] == FAILED
    return done, failed


class _Dispatcher:
    """The `ray.wait` loop over a fixed number of worker slots."""

    def __init__(self, spec: SweepSpec, store: Any, plan: Plan, n_workers: int, runner: str,
                 result: SweepResult, progress: Any, rerun_failed: bool = False) -> None:
        import ray

        from services.worker import PolicyWorker

        self.ray, self.store, self.plan, self.result, self.progress = ray, store, plan, result, progress
        self.max_attempts = spec.resources.max_attempts
        res = spec.resources
        threads = max(1, int(res.cpus_per_worker))
        self.generation = 0
        token = uuid.uuid4().hex[:8]

        def make_actor() -> Any:
            # Named (sweep, driver pid, dispatch token, generation) so operators and tests can
            # find a worker; the token keeps names unique while old actors are still being torn down.
            self.generation += 1
            name = f"natsbench-{plan.sweep}-{os.getpid()}-{token}-{self.generation}"
            return PolicyWorker.options(name=name, num_cpus=res.cpus_per_worker,
                                        num_gpus=res.gpus_per_worker).remote(runner=runner, threads=threads)

        self.make_actor = make_actor
        self.queues: dict[tuple[str, str, str], deque[Cell]] = {}
        for cell in plan.todo:
            self.queues.setdefault(cell.model_key, deque()).append(cell)
        self.slots: list[dict[str, Any]] = [{"actor": self.make_actor(), "model": None} for _ in range(n_workers)]
        self.inflight: dict[Any, tuple[dict[str, Any], Cell, float]] = {}
        self.deaths: dict[str, int] = {}
        self.claimed: set[str] = set()  # claimed by this driver (a retried cell is not claimed twice)
        self.rerun_failed = rerun_failed

    def _next_cell(self, slot: dict[str, Any]) -> Cell | None:
        own = self.queues.get(slot["model"])
        if not own:
            busy = [s["model"] for s in self.slots if s is not slot]
            left = {k: len(q) / (1 + busy.count(k)) for k, q in self.queues.items() if q}
            if not left:
                return None
            slot["model"] = max(left, key=left.get)
            own = self.queues[slot["model"]]
        return own.popleft()

    def _dispatch(self, slot: dict[str, Any]) -> None:
        while (cell := self._next_cell(slot)) is not None:
            if cell.run_key not in self.claimed:
                if not self.store.claim(cell.run_key, retry_failed=self.rerun_failed):
                    continue  # another driver holds or finished it
                self.claimed.add(cell.run_key)
            ref = slot["actor"].run.remote(cell.config)
            self.inflight[ref] = (slot, cell, time.perf_counter())
            return

    def _finish(self, cell: Cell, record: dict[str, Any], t_sent: float) -> None:
        record.update(run_key=cell.run_key, sweep=self.plan.sweep,
                      attempts=self.deaths.get(cell.run_key, 0) + 1)
        t_store = time.perf_counter()
        self.store.record(record)
        t_end = time.perf_counter()
        worker = (record.get("extras") or {}).get("worker") or {}
        self.result.timings.append({"wall_s": t_end - t_sent, "store_s": t_end - t_store,
                                    "cell_s": float(worker.get("cell_s", 0.0))})
        self.result.executed += 1
        self.result.records.append(record)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix_str(f"failed={sum(r['status'] != DONE for r in self.result.records)}")

    def run(self) -> None:
        from services.worker import failed_record

        for slot in self.slots:
            self._dispatch(slot)
        while self.inflight:
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
            for ref in ready:
                slot, cell, t_sent = self.inflight.pop(ref)
                record: dict[str, Any] | None = None
                try:
                    record = self.ray.get(ref)
                except self.ray.exceptions.RayActorError as exc:
                    n = self.deaths[cell.run_key] = self.deaths.get(cell.run_key, 0) + 1
                    slot["actor"], slot["model"] = self.make_actor(), None
                    if n < self.max_attempts:
                        self.queues.setdefault(cell.model_key, deque()).appendleft(cell)
                    else:
                        record = failed_record(cell.config, f"worker died on {n} attempts; last: {str(exc)[:800]}")
                except self.ray.exceptions.RayError as exc:
                    record = failed_record(cell.config, f"{type(exc).__name__}: {exc}")
                if record is not None:
                    self._finish(cell, record, t_sent)
                self._dispatch(slot)

    def abort(self) -> None:
        """Kill every worker; the cells they held are put back to pending by the caller."""
        for slot in self.slots:
            try:
                self.ray.kill(slot["actor"])
            except Exception:  # noqa: BLE001 - already dead
                pass


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _warn_if_unschedulable(spec: SweepSpec, n_workers: int) -> None:
    """Say so when the cluster (as it is now) cannot hold the requested workers: their actors
    would wait for resources (an autoscaling cluster may still add them)."""
    import ray

    have = ray.cluster_resources()
    res = spec.resources
    for kind, per_worker in (("CPU", res.cpus_per_worker), ("GPU", res.gpus_per_worker)):
        need = per_worker * n_workers
        if need > have.get(kind, 0.0) + 1e-9:
            print(f"warning: {n_workers} workers need {need:g} {kind} but the Ray cluster has "
                  f"{have.get(kind, 0.0):g}; workers will wait until it has them "
                  f"(lower --workers or resources.{'gpus' if kind == 'GPU' else 'cpus'}_per_worker)",
                  file=sys.stderr)


def run_sweep(spec: SweepSpec, db_url: str, *, address: str | None = None, workers: int | None = None,
              rerun_failed: bool = False, runner: str | None = None, progress: bool = True,
              store: Any = None) -> SweepResult:
    """Plan `spec` against the store at `db_url`, execute what is not done, return the counts."""
    from services.worker import DEFAULT_RUNNER, RUNNER_ENV

    store = store if store is not None else open_store(db_url)
    cells = build_cells(spec)
    store.ensure_sweep(spec.name, spec.model_dump(mode="json"))
    store.release_running(spec.name)  # left over by a driver that was killed
    statuses = store.ensure_runs(spec.name, [c.config for c in cells])
    plan = decide(spec.name, cells, statuses, rerun_failed)
    result = SweepResult(sweep=spec.name, cells=len(cells), skipped=len(plan.skipped),
                         plan_keys=[c.run_key for c in cells])
    if plan.todo:
        n_workers = max(1, min(workers or spec.resources.workers, len(plan.todo)))
        init_ray(address, num_cpus=n_workers * spec.resources.cpus_per_worker)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(plan.todo), desc=f"sweep {spec.name}", unit="cell", file=sys.stderr,
                       mininterval=0.5, dynamic_ncols=True)
        _warn_if_unschedulable(spec, n_workers)
        runner = runner or os.environ.get(RUNNER_ENV) or DEFAULT_RUNNER
        dispatcher = _Dispatcher(spec, store, plan, n_workers, runner, result, bar, rerun_failed)
        main_thread = threading.current_thread() is threading.main_thread()
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
        try:
            dispatcher.run()
        except KeyboardInterrupt:
            result.interrupted = True
            dispatcher.abort()
            store.release_running(spec.name)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, old_term)
            if bar is not None:
                bar.close()
    result.done, result.failed = _counts(store, plan)
    return result
