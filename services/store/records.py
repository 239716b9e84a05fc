"""Conversions between plain run dicts (configs, records) and rows of the `runs` table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from services.declaration import (
    CONFIG_KEYS,
    FINISHED_STATUSES,
    METRIC,
    METRIC_FIELDS,
    RUN_CONFIG_COLUMNS,
    RUN_STATUSES,
    check_compress,
    check_config,
)

from . import keys
from .engine import jsonable
from .keys import run_key

# The fields of a run dict as `Store.runs()` returns them, in this order: the key, the config
# fields (with `budget` read from policy_params and `compress` filled with the policy's default when the
# config has none), the code version, the lifecycle, the metrics.
RUN_FIELDS: tuple[str, ...] = (
    "run_key",
    "sweep",
    *(f.name for f in RUN_CONFIG_COLUMNS),
    "code_version",
    "status",
    "error",
    "attempts",
    "started_at",
    "finished_at",
    "updated_at",
    "environment",
    *METRIC_FIELDS,
    "extras",
    "config",
)


def _budget(policy_params: dict[str, Any]) -> float | None:
    budget = policy_params.get("budget")
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise ValueError(f"policy_params['budget'] = {budget!r} must be a number or None")
    return float(budget)


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """The `runs` columns a cell config fills (run_key included); validates the config."""
    key = run_key(config)  # checks the keys and that the values are JSON
    check_config(config)  # types, ranges the columns hold, devices, dtypes (services.declaration)
    derived = {"budget": _budget(config["policy_params"]),
               "compress": check_compress(config["policy"], config.get("compress"), "cell config field 'compress'")}
    columns = {"run_key": key}
    for field in RUN_CONFIG_COLUMNS:  # services.declaration: one column per declared config field
        value = derived[field.name] if field.name in derived else config[field.name]
        if field.type == "dict":
            value = jsonable(value)
        elif field.type == "str" and value is not None:
            value = str(value)
        columns[field.name] = value
    return {**columns, "config": jsonable(config), "code_version": keys.CODE_VERSION}


def record_config(record: dict[str, Any]) -> dict[str, Any]:
    """The cell config inside a record: its `config` entry, else its config fields (`compress`
    included when the record has it)."""
    config = record.get("config")
    if isinstance(config, dict):
        return config
    return {k: record[k] for k in (*CONFIG_KEYS, "compress") if k in record and record[k] is not None}


def _metric(name: str, value: Any) -> int | float | None:
    if value is None:
        return None
    if hasattr(value, "item"):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"record metric {name} = {value!r} must be a number or None")
    if not math.isfinite(value):
        return None
    return int(round(value)) if METRIC[name].type == "int" else float(value)


def result_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The `runs` columns a finished record fills: status, error, environment, metrics, extras."""
    status = record.get("status")
    if status not in FINISHED_STATUSES:
        raise ValueError(
            f"record status {status!r} is not a finished status; allowed: {list(FINISHED_STATUSES)}"
        )
    error = record.get("error")
    columns: dict[str, Any] = {
        "status": status,
        "error": None if error is None else str(error),
        "environment": jsonable(record.get("environment")),
        "extras": jsonable(record.get("extras")),
    }
    for name in METRIC_FIELDS:
        columns[name] = _metric(name, record.get(name))
    return columns


def check_status(status: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Validate a status filter (one status or several)."""
    if status is None:
        return None
    statuses = [status] if isinstance(status, str) else list(status)
    bad = [s for s in statuses if s not in RUN_STATUSES]
    if bad:
        raise ValueError(f"unknown run status {bad}; allowed: {list(RUN_STATUSES)}")
    return statuses


def iso(value: datetime | None) -> str | None:
    """A database timestamp as an ISO 8601 string in UTC (naive values are UTC already)."""
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")


def run_to_dict(row: Mapping[str, Any], sweep: str | None = None) -> dict[str, Any]:
    """A `runs` row (with its owner sweep's name as `sweep_name`) as a plain dict with every
    field of `RUN_FIELDS`, timestamps as ISO strings; `sweep` overrides the sweep name."""
    out: dict[str, Any] = {}
    for name in RUN_FIELDS:
        if name == "sweep":
            out[name] = sweep or row["sweep_name"]
        elif name.endswith("_at"):
            out[name] = iso(row[name])
        else:
            out[name] = row[name]
    return out
