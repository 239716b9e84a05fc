"""Write statements built once per dialect and executed with parameters.

Building an insert-on-conflict statement costs more than executing it, so the hot paths
(`Store.record`) use these prebuilt statements: SQLAlchemy compiles each once and reuses
the compiled form. Bind names carry a `p_` prefix (names equal to column names are
reserved by SQLAlchemy in VALUES clauses).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Integer, and_, bindparam, case, func, select
from sqlalchemy.sql.dml import Insert

from .clock import db_now
from .models import DONE, METRIC_FIELDS, RUNNING, Run, SweepRun

RUNS = Run.__table__
SWEEP_RUNS = SweepRun.__table__
_TIMESTAMPS = ("started_at", "finished_at", "updated_at")
# Columns a finished record sets, as bind parameters (timestamps come from the database clock).
RECORD_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in RUNS.columns if c.name != "id" and c.name not in _TIMESTAMPS
)
# Columns a late (or retried) record updates on an existing row that is not done yet.
_RESULT_UPDATES = ("status", "error", "environment", "extras", "n_examples", "lease_owner", "lease_expires_at",
                   *METRIC_FIELDS)


def record_upsert(insert: Callable[..., Any], *, leased: bool = False) -> Insert:
    """INSERT a finished run, or UPDATE the existing row unless it is already done; RETURNING id.

    Parameters: `p_<column>` for every column of RECORD_COLUMNS. No row returned = not written.
    `leased`: the UPDATE is a compare-and-set on the lease, it happens only while the row is
    running under the lease of `p_expected_owner` (a driver whose lease another driver took over
    writes nothing; a row already done is never touched either).
    """
    values = {name: bindparam(f"p_{name}", type_=RUNS.c[name].type) for name in RECORD_COLUMNS}
    stmt = insert(RUNS).values(**values, **{name: db_now() for name in _TIMESTAMPS})
    new = stmt.excluded
    set_ = {name: new[name] for name in _RESULT_UPDATES}
    set_.update(
        sweep_id=func.coalesce(RUNS.c.sweep_id, new.sweep_id),
        attempts=case((new.attempts > RUNS.c.attempts, new.attempts), else_=RUNS.c.attempts),
        started_at=func.coalesce(RUNS.c.started_at, new.started_at),
        finished_at=new.finished_at,
        updated_at=new.updated_at,
    )
    where = RUNS.c.status != DONE
    if leased:
        where = and_(RUNS.c.status == RUNNING,
                     RUNS.c.lease_owner == bindparam("p_expected_owner", type_=RUNS.c.lease_owner.type))
    stmt = stmt.on_conflict_do_update(index_elements=["run_key"], set_=set_, where=where)
    # RETURNING, not rowcount: an upsert's rowcount is not reliable across drivers.
    return stmt.returning(RUNS.c.id)


def membership_insert(insert: Callable[..., Any]) -> Insert:
    """Add run `p_run_key` to sweep `p_sweep_id` (nothing if it is a member already)."""
    rows = select(bindparam("p_sweep_id", type_=Integer()), RUNS.c.id).where(
        RUNS.c.run_key == bindparam("p_run_key")
    )
    return insert(SWEEP_RUNS).from_select(["sweep_id", "run_id"], rows).on_conflict_do_nothing()
