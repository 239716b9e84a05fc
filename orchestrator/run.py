"""Dispatch a planned sweep to `PolicyWorker` actors with `ray.wait` and store every record.

One cell is in flight per worker; a worker keeps the model it holds and takes the next cell of
that model, switching to the model with the most cells left per worker only when its own runs
out. A worker that dies is replaced and its cell goes back to the front of the queue, up to
`resources.max_attempts` attempts, then the cell is recorded failed. The driver is the only
writer of the store, for SQLite and PostgreSQL alike (one code path; a write is a few ms, and
workers on GPU hosts need no database access). Ctrl-C (or SIGTERM) puts this driver's cells
in flight back to pending, kills the workers and returns with `interrupted=True`.

Several drivers may run one sweep at once. Each claim carries a lease (this driver's id and an
expiry on the database clock) that a background thread renews every third of its length. A
cell another driver holds is left alone while its lease is live; once this driver has nothing
else to do it waits for such cells, and takes over any whose lease expires (that driver died)
or that went back to pending. With `wait_elsewhere=False` it returns instead and the caller
reports them as still running elsewhere. Recording a result is a compare-and-set on the lease
(`Store.record(..., owner=)`): a driver that stalled past its lease while another driver took the
cell over records nothing, says so on stderr and counts it in `lease_lost`.
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

from orchestrator.plan import DONE, FAILED, PENDING, RUNNING, Cell, Plan, build_cells, decide
from orchestrator.spec import SweepSpec

# raylet_start_wait_time_s: the default 60 s is too short on a busy 2-core machine.
RAY_ENV_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                    "RAY_raylet_start_wait_time_s": "180"}
# Only for the in-process Ray: single-node mode, every Ray process on 127.0.0.1. Never when
# joining a cluster (it would refuse other nodes).
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LEASE_ENV = "NATSBENCH_LEASE_S"


@dataclass
class SweepResult:
    """What one `run_sweep` call did; `summary()` is the JSON last line of `natsbench sweep`."""

    sweep: str
    cells: int
    executed: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    running_elsewhere: int = 0  # running under other drivers' leases when this call returned
    pending: int = 0  # neither run nor held when this call returned (interrupted, or released elsewhere)
    # executed here, but not recorded: this driver's lease had lapsed and another driver took the cell
    lease_lost: int = 0
    interrupted: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)  # executed and recorded in this call
    plan_keys: list[str] = field(default_factory=list)  # every cell of the sweep file
    # per executed cell: driver seconds from dispatch to stored, worker seconds, store seconds
    timings: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "cells": self.cells, "executed": self.executed,
                "done": self.done, "failed": self.failed, "skipped": self.skipped,
                "running_elsewhere": self.running_elsewhere, "pending": self.pending,
                "lease_lost": self.lease_lost}


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


def _counts(store: Any, plan: Plan) -> dict[str, int]:
    """Cells of the plan per status, as the store has them now."""
    keys = {c.run_key for c in plan.cells}
    counts = dict.fromkeys((DONE, FAILED, RUNNING, PENDING), 0)
    for row in store.runs(plan.sweep):
        if row["run_key"] in keys:
            counts[row["status"]] += 1
    return counts


def lease_seconds(value: float | None = None) -> float:
    """The lease length: `value`, else $NATSBENCH_LEASE_S, else the store's default (60 s)."""
    from services.store.store import DEFAULT_LEASE_S

    if value is None:
        raw = os.environ.get(LEASE_ENV)
        if not raw:
            return DEFAULT_LEASE_S
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"${LEASE_ENV} must be a number of seconds in (0, 86400], got {raw!r}") from None
    if not 0 < value <= 86400:
        raise ValueError(f"the lease must be a number of seconds in (0, 86400], got {value!r}")
    return float(value)


class _LeaseRenewer:
    """A daemon thread that renews this driver's leases every third of the lease length.

    A thread (not the `ray.wait` loop) so that a long `ray.get` or store write in the loop can
    never let a live driver's lease lapse; it dies with the driver, which is the point.
    """

    def __init__(self, store: Any, owner: str, lease_s: float) -> None:
        self.store, self.owner, self.lease_s = store, owner, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="natsbench-lease-renewer", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.store.renew_leases(self.owner, self.lease_s)
            except Exception as exc:  # noqa: BLE001 - keep trying; the next renewal may work
                print(f"warning: could not renew the leases of driver {self.owner}: {exc}", file=sys.stderr)

    def __enter__(self) -> _LeaseRenewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class _Dispatcher:
    """The `ray.wait` loop over a fixed number of worker slots."""

    def __init__(self, spec: SweepSpec, store: Any, plan: Plan, n_workers: int, runner: str,
                 result: SweepResult, progress: Any, rerun_failed: bool = False, *, owner: str,
                 lease_s: float, wait_elsewhere: bool = True) -> None:
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
        self.owner, self.lease_s, self.wait_elsewhere = owner, lease_s, wait_elsewhere
        # Cells whose claim failed: done, or held by another driver. Watched once the queues run dry.
        self.elsewhere: dict[str, Cell] = {}
        self.poll_s = min(2.0, lease_s / 3)

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
                if not self.store.claim(cell.run_key, retry_failed=self.rerun_failed, owner=self.owner,
                                        lease_s=self.lease_s):
                    self.elsewhere[cell.run_key] = cell  # done, or another driver holds it
                    continue
                self.claimed.add(cell.run_key)
            ref = slot["actor"].run.remote(cell.config)
            self.inflight[ref] = (slot, cell, time.perf_counter())
            return

    def _finish(self, cell: Cell, record: dict[str, Any], t_sent: float) -> None:
        record.update(run_key=cell.run_key, sweep=self.plan.sweep,
                      attempts=self.deaths.get(cell.run_key, 0) + 1)
        t_store = time.perf_counter()
        # compare-and-set on this driver's lease: a lapsed lease another driver took records nothing
        written = self.store.record(record, owner=self.owner)
        t_end = time.perf_counter()
        if not written:
            self.result.lease_lost += 1
            print(f"natsbench sweep: cell {cell.run_key[:12]} not recorded: driver {self.owner} lost its "
                  "lease on it to another driver, whose result is the one kept", file=sys.stderr)
        worker = (record.get("extras") or {}).get("worker") or {}
        self.result.timings.append({"wall_s": t_end - t_sent, "store_s": t_end - t_store,
                                    "cell_s": float(worker.get("cell_s", 0.0))})
        self.result.executed += 1
        if written:
            self.result.records.append(record)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix_str(f"failed={sum(r['status'] != DONE for r in self.result.records)}")

    def _take_over(self) -> None:
        """Requeue the cells held elsewhere that are free again (pending, or their lease expired:
        that driver died); forget those another driver finished. Idle slots pick them up."""
        if not self.elsewhere:
            return
        for key, state in self.store.leases(self.elsewhere).items():
            if state["status"] in (DONE, FAILED):
                del self.elsewhere[key]  # finished by whoever held it; not rerun in this call
            elif not state["lease_live"]:
                cell = self.elsewhere.pop(key)
                self.queues.setdefault(cell.model_key, deque()).appendleft(cell)
        busy = {id(slot) for slot, _, _ in self.inflight.values()}
        for slot in self.slots:
            if id(slot) not in busy:
                self._dispatch(slot)

    def run(self) -> None:
        from services.worker import failed_record

        for slot in self.slots:
            self._dispatch(slot)
        last_poll = time.monotonic()
        while self.inflight or (self.wait_elsewhere and self.elsewhere):
            if time.monotonic() - last_poll >= self.poll_s:
                self._take_over()
                last_poll = time.monotonic()
            if not self.inflight:
                time.sleep(self.poll_s / 2)
                continue
            # A timeout only while cells are held elsewhere, so the loop can watch their leases.
            timeout = self.poll_s if self.elsewhere else None
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
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
              store: Any = None, lease_s: float | None = None, wait_elsewhere: bool = True) -> SweepResult:
    """Plan `spec` against the store at `db_url`, execute what is not done, return the counts.

    `lease_s` (default $NATSBENCH_LEASE_S, else 60 s) is how long a claim holds unless renewed;
    `wait_elsewhere` waits for cells other drivers hold (taking over those whose lease expires)
    instead of returning with them counted in `running_elsewhere`.
    """
    from services.store.store import new_owner_id
    from services.worker import DEFAULT_RUNNER, RUNNER_ENV

    lease_s = lease_seconds(lease_s)
    store = store if store is not None else open_store(db_url)
    cells = build_cells(spec)
    store.ensure_sweep(spec.name, spec.model_dump(mode="json"))
    # No release of `running` cells here: a live driver may hold them. Claims take over only
    # the cells whose lease expired (their driver was killed).
    owner = new_owner_id()
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
        dispatcher = _Dispatcher(spec, store, plan, n_workers, runner, result, bar, rerun_failed,
                                 owner=owner, lease_s=lease_s, wait_elsewhere=wait_elsewhere)
        main_thread = threading.current_thread() is threading.main_thread()
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
        try:
            with _LeaseRenewer(store, owner, lease_s):
                dispatcher.run()
        except KeyboardInterrupt:
            result.interrupted = True
            dispatcher.abort()
            store.release_running(spec.name, owner=owner)  # only this driver's cells
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, old_term)
            if bar is not None:
                bar.close()
    counts = _counts(store, plan)
    # This driver's cells are finished or released by now: a running cell is another driver's.
    result.done, result.failed = counts[DONE], counts[FAILED]
    result.running_elsewhere, result.pending = counts[RUNNING], counts[PENDING]
    return result
