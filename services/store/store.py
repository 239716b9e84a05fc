"""The result store repository: every read and write of sweeps and runs goes through `Store`."""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from . import keys, schema, statements
from .clock import db_later, db_now
from .engine import (
    SQLITE_BUSY_TIMEOUT_S,
    WRITE_OPTION,
    build_engine,
    connect_error_reason,
    enable_wal,
    mask_url,
    parse_url,
)
from .errors import SchemaError, StoreError
from .models import FAILED, PENDING, RUN_STATUSES, RUNNING, Run, Sweep, SweepRun
from .records import check_status, config_columns, iso, record_config, result_columns, run_to_dict

T = TypeVar("T")
# Seconds a claim holds without renewal: long enough to ride out a stalled write on a busy
# machine, short enough that a killed driver's cells are taken over within a minute.
DEFAULT_LEASE_S = 60.0
_CHUNK = 500  # rows per multi-row INSERT (well under SQLite's bound-parameter limit)
_WRITE_RETRIES = 8


def _transient(exc: DBAPIError) -> bool:
    """Lock contention (SQLite), a deadlock / serialization failure or a dropped connection
    (PostgreSQL): worth retrying the whole transaction."""
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "sqlstate", None)
    text = str(exc.orig).lower()
    return code in ("40001", "40P01") or "database is locked" in text or "database table is locked" in text


def _check_lease(lease_s: float) -> float:
    if isinstance(lease_s, bool) or not isinstance(lease_s, int | float) or not 0 < lease_s <= 86400:
        raise ValueError(f"lease_s must be a number of seconds in (0, 86400], got {lease_s!r}")
    return float(lease_s)


def new_owner_id() -> str:
    """A driver id for leases: host, process id and a random part (pids are reused)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Store:
    """The natsbench result store on SQLite or PostgreSQL, addressed by a SQLAlchemy URL.

    Rows are keyed by `run_key`, so every write is an insert-on-conflict and a retried or
    duplicated write never creates a second row; a run's status moves by compare-and-set
    (pending -> running -> done | failed) and timestamps come from the database clock.
    Nothing connects until first use; the first operation checks that the schema is the one
    this code expects (`SchemaError` otherwise: run `natsbench db upgrade`). One Store per
    process or thread pool is enough: its engine pools connections and is thread-safe.
    """

    def __init__(self, url: str) -> None:
        self._url = parse_url(url)
        self.url: str = self._url.render_as_string(hide_password=False)
        self.display_url: str = mask_url(self._url)
        self.dialect: str = self._url.get_backend_name()
        self._engine = build_engine(self._url)
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._schema_ok = False
        self._sweep_ids: dict[str, int] = {}  # sweep name -> id, filled after commits
        self._record_upsert = statements.record_upsert(self._insert)
        self._record_leased = statements.record_upsert(self._insert, leased=True)
        self._membership_insert = statements.membership_insert(self._insert)
        self.owner_id: str = new_owner_id()  # the default lease owner of this Store's claims

    def __repr__(self) -> str:
        return f"Store({self.display_url!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    # ----------------------------------------------------------------- connections
    def _sqlite_file_missing(self) -> bool:
        database = self._url.database or ""
        if self.dialect != "sqlite" or database == ":memory:" or database.startswith("file:"):
            return False
        return not Path(database).expanduser().exists()

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[Connection]:
        try:
            conn = self._engine.connect()
        except DBAPIError as exc:
            raise StoreError(f"cannot connect to {self.display_url}: {connect_error_reason(exc)}") from None
        with conn:
            if write:
                conn.execution_options(**{WRITE_OPTION: True})
            yield conn

    def _read(self, fn: Callable[[Connection], T]) -> T:
        self.check_schema()
        with self._connect(write=False) as conn, conn.begin():
            return fn(conn)

    def _write(self, fn: Callable[[Connection], T]) -> T:
        self.check_schema()
        for attempt in range(_WRITE_RETRIES):
            start = time.monotonic()
            try:
                with self._connect(write=True) as conn, conn.begin():
                    return fn(conn)
            except DBAPIError as exc:
                if attempt == _WRITE_RETRIES - 1 or not _transient(exc):
                    raise
                if time.monotonic() - start > 0.9 * SQLITE_BUSY_TIMEOUT_S:  # waited the whole busy timeout
                    raise StoreError(
                        f"{self.display_url} stayed locked by another writer for {SQLITE_BUSY_TIMEOUT_S:.0f} s: "
                        f"{exc.orig}"
                    ) from exc
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- schema
    def upgrade(self) -> tuple[str | None, str]:
        """Create or upgrade the schema to the newest version; returns (before, after)."""
        with self._connect(write=True) as conn, conn.begin():
            result = schema.upgrade(conn, self.display_url)
        enable_wal(self._engine)  # natsbench's own store now: safe to switch its journal mode
        self._schema_ok = True
        return result

    def check_schema(self) -> None:
        """Raise SchemaError unless the store holds this code's schema version (checked once)."""
        if self._schema_ok:
            return
        if self._sqlite_file_missing():
            raise SchemaError(
                f"no store at {self.display_url} (the file does not exist): {schema.upgrade_hint(self.display_url)}"
            )
        with self._connect(write=False) as conn, conn.begin():
            schema.check(conn, self.display_url)
        self._schema_ok = True

    def schema_version(self) -> str | None:
        """The schema revision in the database (None: no natsbench schema); never raises SchemaError."""
        if self._sqlite_file_missing():
            return None
        with self._connect(write=False) as conn, conn.begin():
            return schema.current_revision(conn)

    def row_counts(self) -> dict[str, int]:
        """Rows per table."""

        def count(conn: Connection) -> dict[str, int]:
            return {
                model.__tablename__: conn.execute(select(func.count()).select_from(model)).scalar_one()
                for model in (Sweep, Run, SweepRun)
            }

        return self._read(count)

    # ----------------------------------------------------------------- sweeps
    def _sweep_id(self, conn: Connection, sweep: str | int, spec: dict[str, Any] | None = None) -> int:
        """The id of a sweep given by id, or by name (created when missing)."""
        if isinstance(sweep, int) and not isinstance(sweep, bool):
            found = conn.execute(select(Sweep.id).where(Sweep.id == sweep)).scalar_one_or_none()
            if found is None:
                raise StoreError(f"no sweep with id {sweep} in {self.display_url}")
            return found
        if not isinstance(sweep, str) or not sweep.strip():
            raise ValueError(f"sweep must be a non-empty name or an id, got {sweep!r}")
        stmt = self._insert(Sweep).values(name=sweep, spec=spec if spec is not None else {})
        if spec is None:
            stmt = stmt.on_conflict_do_nothing(index_elements=["name"])
        else:
            stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"spec": stmt.excluded.spec})
        conn.execute(stmt)
        return conn.execute(select(Sweep.id).where(Sweep.name == sweep)).scalar_one()

    def ensure_sweep(self, name: str, spec: dict[str, Any] | None = None) -> int:
        """Create the sweep `name` (or keep it) and return its id; a given spec replaces the stored one."""
        return self._write(lambda conn: self._sweep_id(conn, name, spec))

    def sweeps(self) -> list[dict[str, Any]]:
        """Every sweep: name, spec, created_at, counts per status and total of its runs of this
        code version (`CODE_VERSION`), `stale` = its runs of older code versions (kept, never
        reused: a sweep reruns those cells under new keys), last update of its runs."""

        def read(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                select(SweepRun.sweep_id, Run.status, Run.code_version, func.count(), func.max(Run.updated_at))
                .join(Run, Run.id == SweepRun.run_id)
                .group_by(SweepRun.sweep_id, Run.status, Run.code_version)
            ).all()
            counts: dict[int, dict[str, int]] = {}
            stale: dict[int, int] = {}
            last: dict[int, Any] = {}
            for sweep_id, status, code_version, n, updated in rows:
                if code_version == keys.CODE_VERSION:
                    counts.setdefault(sweep_id, dict.fromkeys(RUN_STATUSES, 0))[status] = n
                else:
                    stale[sweep_id] = stale.get(sweep_id, 0) + n
                if updated is not None and (sweep_id not in last or updated > last[sweep_id]):
                    last[sweep_id] = updated
            out = []
            for sweep in conn.execute(select(Sweep.__table__).order_by(Sweep.id)).all():
                c = counts.get(sweep.id, dict.fromkeys(RUN_STATUSES, 0))
                out.append(
                    {
                        "name": sweep.name,
                        "spec": sweep.spec,
                        "created_at": iso(sweep.created_at),
                        "counts": c,
                        "total": sum(c.values()),
                        "stale": stale.get(sweep.id, 0),
                        "updated_at": iso(last.get(sweep.id)),
                    }
                )
            return out

        return self._read(read)

    # ----------------------------------------------------------------- runs
    def ensure_runs(self, sweep: str | int, configs: Iterable[dict[str, Any]]) -> dict[str, str]:
        """Insert a pending row for every config not stored yet and add all to the sweep.

        Returns {run_key: status} for every config (existing rows keep their status, so the
        caller skips the done ones).
        """
        rows = {}
        for config in configs:
            columns = config_columns(config)
            rows[columns["run_key"]] = columns
        ordered = [rows[k] for k in sorted(rows)]  # one lock order for every writer: no deadlocks

        def write(conn: Connection) -> dict[str, str]:
            sweep_id = self._sweep_id(conn, sweep)
            statuses: dict[str, str] = {}
            for start in range(0, len(ordered), _CHUNK):
                chunk = ordered[start : start + _CHUNK]
                values = [{**row, "sweep_id": sweep_id, "status": PENDING, "attempts": 0} for row in chunk]
                conn.execute(
                    self._insert(statements.RUNS).on_conflict_do_nothing(index_elements=["run_key"]), values
                )
                found = conn.execute(
                    select(Run.id, Run.run_key, Run.status).where(
                        Run.run_key.in_([r["run_key"] for r in chunk])
                    )
                ).all()
                members = [{"sweep_id": sweep_id, "run_id": run_id} for run_id, _, _ in sorted(found)]
                conn.execute(self._insert(statements.SWEEP_RUNS).on_conflict_do_nothing(), members)
                statuses.update({key: status for _, key, status in found})
            return statuses

        return self._write(write) if ordered else {}

    def claim(
        self,
        run_key: str,
        *,
        retry_failed: bool = False,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> bool:
        """Move a run pending -> running (compare-and-set), attempts + 1; True if this caller won.

        The winner holds a lease: `owner` (default: this Store's `owner_id`) and an expiry
        `lease_s` seconds ahead on the database clock, which it keeps alive with
        `renew_leases`. A running run whose lease has expired (its driver died) is claimed
        like a pending one; a live lease is never taken. With `retry_failed` a failed run can
        be claimed too.
        """
        lease_s = _check_lease(lease_s)
        allowed = [PENDING, FAILED] if retry_failed else [PENDING]
        expired = and_(
            Run.status == RUNNING,
            or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < db_now()),
        )
        stmt = (
            update(Run)
            .where(Run.run_key == run_key, or_(Run.status.in_(allowed), expired))
            .values(
                status=RUNNING,
                attempts=Run.attempts + 1,
                started_at=db_now(),
                finished_at=None,
                updated_at=db_now(),
                error=None,
                lease_owner=owner or self.owner_id,
                lease_expires_at=db_later(lease_s),
            )
        )
        return self._write(lambda conn: conn.execute(stmt).rowcount == 1)

    def renew_leases(self, owner: str | None = None, lease_s: float = DEFAULT_LEASE_S) -> int:
        """Push the expiry of every running run `owner` holds `lease_s` seconds ahead; returns how
        many it still holds (fewer than it thinks: another driver took an expired one over)."""
        lease_s = _check_lease(lease_s)
        stmt = (
            update(Run)
            .where(Run.lease_owner == (owner or self.owner_id), Run.status == RUNNING)
            .values(lease_expires_at=db_later(lease_s))
        )
        return self._write(lambda conn: conn.execute(stmt).rowcount)

    def leases(self, run_keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """{run_key: {"status", "lease_owner", "lease_live"}} of the given runs (missing keys are
        left out); `lease_live` is True for a running run whose lease has not expired yet
        (database clock)."""
        keys = sorted(set(run_keys))
        live = and_(Run.lease_expires_at.is_not(None), Run.lease_expires_at >= db_now())

        def read(conn: Connection) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for start in range(0, len(keys), _CHUNK):
                rows = conn.execute(
                    select(Run.run_key, Run.status, Run.lease_owner, live.label("live")).where(
                        Run.run_key.in_(keys[start : start + _CHUNK])
                    )
                ).all()
                for key, status, owner, is_live in rows:
                    out[key] = {"status": status, "lease_owner": owner,
                                "lease_live": bool(status == RUNNING and is_live)}
            return out

        return self._read(read) if keys else {}

    def record(self, record: dict[str, Any], *, owner: str | None = None) -> bool:
        """Store a finished record (status done or failed); True if it was written.

        Creates the row if it is missing; a row already `done` is never overwritten (a late
        duplicate returns False), so recording the same cell twice is harmless. With `owner` (the
        lease owner the caller claimed the run as) the write is a compare-and-set on the lease:
        it happens only while the row is running under `owner`'s lease, so a driver whose lease
        expired and was taken over by another driver writes nothing (False) and the live owner's
        result is the one kept. (The run key holds the code version, so a done row of the same
        key is a result of the same code: also False, nothing to do.)
        """
        config = record_config(record)
        columns = config_columns(config)
        if record.get("run_key"):
            columns["run_key"] = str(record["run_key"])
        results = result_columns(record)
        columns["n_examples"] = record.get("n_examples", columns["n_examples"])  # examples actually run
        attempts = int(record.get("attempts") or 1)
        sweep = record.get("sweep")

        params = {f"p_{name}": value for name, value in columns.items()}
        params.update({f"p_{name}": value for name, value in results.items()}, p_attempts=attempts)
        params.update(p_lease_owner=None, p_lease_expires_at=None)  # a finished run holds no lease
        upsert = self._record_upsert
        if owner is not None:
            upsert = self._record_leased
            params["p_expected_owner"] = owner

        def write(conn: Connection) -> tuple[bool, int | None]:
            sweep_id = None
            if sweep:
                sweep_id = self._sweep_ids.get(sweep) or self._sweep_id(conn, sweep)
            written = (
                conn.execute(upsert, {**params, "p_sweep_id": sweep_id}).first() is not None
            )
            if sweep_id is not None:
                conn.execute(
                    self._membership_insert, {"p_sweep_id": sweep_id, "p_run_key": params["p_run_key"]}
                )
            return written, sweep_id

        written, sweep_id = self._write(write)
        if sweep_id is not None:
            self._sweep_ids[sweep] = sweep_id  # committed: safe to reuse
        return written

    def release_running(self, sweep: str | int | None = None, owner: str | None = None) -> int:
        """Move running runs (of one sweep, or all; of one lease owner, or any) back to pending,
        e.g. a driver's own runs after Ctrl-C; returns how many."""

        def write(conn: Connection) -> int:
            stmt = (
                update(Run)
                .where(Run.status == RUNNING)
                .values(status=PENDING, updated_at=db_now(), lease_owner=None, lease_expires_at=None)
            )
            if owner is not None:
                stmt = stmt.where(Run.lease_owner == owner)
            if sweep is not None:
                stmt = stmt.where(
                    Run.id.in_(select(SweepRun.run_id).where(SweepRun.sweep_id == self._lookup(conn, sweep)))
                )
            return conn.execute(stmt).rowcount

        return self._write(write)

    def _lookup(self, conn: Connection, sweep: str | int) -> int:
        """The id of an existing sweep (by name or id); StoreError naming the known ones otherwise."""
        column = Sweep.id if isinstance(sweep, int) and not isinstance(sweep, bool) else Sweep.name
        found = conn.execute(select(Sweep.id).where(column == sweep)).scalar_one_or_none()
        if found is None:
            names = conn.execute(select(Sweep.name).order_by(Sweep.id)).scalars().all()
            raise StoreError(f"no sweep {sweep!r} in {self.display_url}; stored sweeps: {names}")
        return found

    def status_counts(self, sweep: str | int | None = None) -> dict[str, int]:
        """Runs of this code version per status (every status present, zeros included), of one
        sweep or of all runs; rows of older code versions are not counted (see `sweeps`)."""

        def read(conn: Connection) -> dict[str, int]:
            stmt = select(Run.status, func.count()).where(Run.code_version == keys.CODE_VERSION).group_by(Run.status)
            if sweep is not None:
                stmt = stmt.join(SweepRun, SweepRun.run_id == Run.id).where(
                    SweepRun.sweep_id == self._lookup(conn, sweep)
                )
            counts = dict.fromkeys(RUN_STATUSES, 0)
            counts.update({status: n for status, n in conn.execute(stmt).all()})
            return counts

        return self._read(read)

    def runs(
        self, sweep: str | int | None = None, status: str | list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Stored runs as plain dicts (fields of `records.RUN_FIELDS`), oldest first.

        `sweep` filters to one sweep's cells (their `sweep` field is then that sweep);
        `status` to one status or a list of them.
        """
        statuses = check_status(status)

        def read(conn: Connection) -> list[dict[str, Any]]:
            stmt = select(Run.__table__, Sweep.name.label("sweep_name")).outerjoin(
                Sweep, Sweep.id == Run.sweep_id
            )
            stmt = stmt.order_by(Run.id)
            label = None
            if sweep is not None:
                sweep_id = self._lookup(conn, sweep)
                stmt = stmt.where(Run.id.in_(select(SweepRun.run_id).where(SweepRun.sweep_id == sweep_id)))
                label = conn.execute(select(Sweep.name).where(Sweep.id == sweep_id)).scalar_one()
            if statuses is not None:
                stmt = stmt.where(Run.status.in_(statuses))
            return [run_to_dict(row, label) for row in conn.execute(stmt).mappings()]

        return self._read(read)

    def get_run(self, run_key: str) -> dict[str, Any] | None:
        """One run by key, or None."""

        def read(conn: Connection) -> dict[str, Any] | None:
            stmt = select(Run.__table__, Sweep.name.label("sweep_name")).outerjoin(
                Sweep, Sweep.id == Run.sweep_id
            )
            row = conn.execute(stmt.where(Run.run_key == run_key)).mappings().first()
            return None if row is None else run_to_dict(row)

        return self._read(read)
