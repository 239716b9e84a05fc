"""The one declaration of a benchmark cell's config and of the run record the store keeps.

Everything that reads or checks a cell or a record derives from the tables below instead of
keeping its own copy: the sweep spec (`orchestrator.spec`), `services.evaluation.run_cell`,
the store's columns and `RUN_FIELDS` (`services.store`), the CLI tables
(`orchestrator.commands.results`) and the dashboard's metric list (`dashboard.data`).
Adding a metric touches three files: a `Metric` line here, the code that measures it
(`services.metrics`), and an Alembic migration adding its column (docs/DESIGN.md).

This module imports nothing heavy (no torch, no SQLAlchemy): the CLI reads it to build its
argument choices. Integer ranges are what both SQLite and PostgreSQL hold in the column type
(`INTEGER` is 32-bit on PostgreSQL), so a value that passes here never fails at the database.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# What a 32-bit signed SQL INTEGER holds (PostgreSQL's `integer`; SQLite holds more).
INT32_MAX = 2**31 - 1
# What a 64-bit signed SQL BIGINT holds (byte counts).
INT64_MAX = 2**63 - 1

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
# `cuda:N` is any CUDA device index; `auto` resolves to cuda when a GPU is visible, else cpu
# (see `resolve_device`). The run key keeps "auto" (docs/DESIGN.md: the cell asked for "any
# device"; the device it ran on is in the record's `environment.device`).
DEVICES: tuple[str, ...] = ("cpu", "cuda", "cuda:N", "auto")
_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+|auto)$")

# The statuses a run moves through: pending -> running -> done | failed. Code names them by these
# constants, never by string literals (SQL included: bound parameters or the constants formatted in).
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
RUN_STATUSES: tuple[str, ...] = (PENDING, RUNNING, DONE, FAILED)
FINISHED_STATUSES: tuple[str, ...] = (DONE, FAILED)


@dataclass(frozen=True)
class ConfigField:
    """One field of a cell config: its name, type ("str", "int", "dict"; "float" only for a derived
    column), unit, meaning and allowed values (`choices`, or the inclusive range `minimum`..`maximum`
    for ints), and its `runs` column: `length` of a str column, `nullable`. The store's config columns
    (services.store.models.Run) and the values a config fills into them (services.store.records)
    are generated from these declarations, as the metric columns are from METRICS."""

    name: str
    type: str
    doc: str
    unit: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    length: int | None = None
    nullable: bool = False


@dataclass(frozen=True)
class Metric:
    """One measured field of a run record and one column of `runs`: `type` "int" (a BIGINT
    column, rounded on the way in) or "float"; `unit`; `header` for CLI tables (None: not in
    the table); `higher_is_better` for rankings (None: neither)."""

    name: str
    type: str
    unit: str
    doc: str
    header: str | None = None
    higher_is_better: bool | None = None


CONFIG_FIELDS: tuple[ConfigField, ...] = (
    ConfigField("model", "str", "a shipped model name (models/<name>), a model folder, or a random: test model",
                length=500),
    ConfigField("policy", "str", "a KV policy of nats_model.policies", length=100),
    ConfigField("policy_params", "dict", "the policy's parameters (budget: kept fraction in (0, 1])"),
    ConfigField("workload", "str", "a workload of services.workloads", length=100),
    ConfigField("workload_params", "dict", "the workload's parameters, normalised by its validate()"),
    ConfigField("n_examples", "int", "instances per cell", unit="examples", minimum=1, maximum=INT32_MAX,
                nullable=True),
    ConfigField("seed", "int", "instance and sampling seed", minimum=0, maximum=INT32_MAX),
    ConfigField("device", "str", "where the model runs", choices=DEVICES, length=50, nullable=True),
    ConfigField("dtype", "str", "the model's weights and activations", choices=DTYPES, length=20, nullable=True),
)
CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in CONFIG_FIELDS)
CONFIG_FIELD: dict[str, ConfigField] = {f.name: f for f in CONFIG_FIELDS}

# Compression protocols (the same tuple as nats_model.policies.base.PROTOCOLS; a test checks it):
# when a policy may evict. streaming: as tokens arrive (prefill chunks and decode); prompt: once, at the
# end of the whole prompt; context: once, at the end of the context, before the question is appended.
PROTOCOLS: tuple[str, ...] = ("streaming", "prompt", "context")
# The optional config field `compress`: a config without it ran the policy's `default_protocol` (what
# the policy did before the field existed), and the run key hashes it only when it differs from that
# default (`key_config`), so the keys of such cells did not change.
COMPRESS = ConfigField("compress", "str", "compression protocol: when the policy may evict (README)",
                       choices=PROTOCOLS, length=20)
# A column derived from the config for filtering: policy_params["budget"] (None for a policy without one).
BUDGET = ConfigField("budget", "float", "policy_params['budget'], the kept fraction asked for", unit="fraction",
                     nullable=True)
# The config columns of `runs`, in table order (every config field, `budget`, `compress`).
RUN_CONFIG_COLUMNS: tuple[ConfigField, ...] = (*CONFIG_FIELDS[:3], BUDGET, COMPRESS, *CONFIG_FIELDS[3:])

METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "float", "fraction", "mean workload score (None for lm_text)", "acc", True),
    Metric("kept_fraction", "float", "fraction", "kept / seen tokens, mean over layers, heads, examples",
           "kept", False),
    Metric("kv_bytes_physical", "int", "bytes", "K+V bytes the cache held at the end (mean over examples)",
           "kv_bytes", False),
    Metric("kv_bytes_full", "int", "bytes", "K+V bytes a full cache would hold for the same tokens"),
    Metric("ttft_s", "float", "s", "time to first token, mean over examples", "ttft_s", False),
    Metric("tpot_s", "float", "s", "time per output token after the first, mean", "tpot_s", False),
    Metric("tokens_per_s", "float", "tokens/s", "decode throughput (lm_text: scored tokens per second)",
           "tok/s", True),
    Metric("peak_memory_bytes", "int", "bytes", "peak RSS of the cell (CUDA: max allocated)"),
)
METRIC_FIELDS: tuple[str, ...] = tuple(m.name for m in METRICS)
METRIC: dict[str, Metric] = {m.name: m for m in METRICS}

# The fields of a run record besides the config and the metrics (what run_cell returns).
RECORD_FIELDS: tuple[str, ...] = ("run_key", "sweep", "status", "error", "attempts", "environment",
                                  *METRIC_FIELDS, "extras")


def check_device(value: Any, where: str = "device") -> str:
    """`value` if it names a device (cpu, cuda, cuda:N, auto); ValueError naming `where` otherwise."""
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise ValueError(f"{where}: unknown device {value!r}; allowed: {', '.join(DEVICES)}")
    return value


def resolve_device(device: str) -> str:
    """The device a model is loaded on: "auto" becomes "cuda" when torch sees a GPU, else "cpu"."""
    check_device(device)
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_int(value: Any, where: str, minimum: int | None, maximum: int | None) -> int:
    """An int in [minimum, maximum] (an integral float such as 8.0 is taken as 8); ValueError
    naming `where` and the allowed range otherwise. Bools are refused (True is not 1 here)."""
    low = "-inf" if minimum is None else minimum
    high = "inf" if maximum is None else maximum
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: must be an integer in [{low}, {high}], got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{where}: {value} is out of range; allowed: integers in [{low}, {high}]")
    return value


def check_config_field(name: str, value: Any, where: str | None = None) -> Any:
    """One config field checked against its declaration (ints normalised); ValueError naming it."""
    spec = CONFIG_FIELD[name]
    where = where or name
    if spec.type == "int":
        return check_int(value, where, spec.minimum, spec.maximum)
    if spec.type == "dict":
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"{where}: must be a mapping of parameter names to values, got {value!r}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ValueError(f"{where}: parameter names must be strings, got {bad!r}")
        return value
    if name == "device":
        return check_device(value, where)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: must be a non-empty string, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{where}: unknown {name} {value!r}; allowed: {', '.join(spec.choices)}")
    return value


def check_config(config: Any) -> dict[str, Any]:
    """A complete cell config checked field by field against the declaration; returns a copy
    with ints normalised. ValueError naming the first bad, missing or unknown field."""
    if not isinstance(config, dict):
        raise ValueError(f"a cell config must be a mapping with the fields {list(CONFIG_KEYS)}, got "
                         f"{type(config).__name__}")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"cell config lacks {missing}; a cell config has the fields {list(CONFIG_KEYS)}")
    out = dict(config)
    for name in CONFIG_KEYS:
        out[name] = check_config_field(name, config[name], f"cell config field {name!r}")
    if "compress" in config:
        out["compress"] = check_compress(out["policy"], config["compress"], "cell config field 'compress'")
    return out


def policy_protocols(policy: str) -> tuple[tuple[str, ...], str]:
    """(the protocols the policy supports, its default) from its class in nats_model.policies (imported
    here, lazily); (("streaming",), "streaming") for a name that is not a registered policy."""
    from nats_model import policies

    if policy not in policies.available():
        return ("streaming",), "streaming"
    cls = policies.policy_class(policy)
    return (tuple(getattr(cls, "protocols", ("streaming",))),
            str(getattr(cls, "default_protocol", "streaming")))


def default_protocol(policy: str) -> str:
    """The protocol a cell of `policy` without a `compress` field ran (`policy_protocols`)."""
    return policy_protocols(policy)[1]


def check_compress(policy: str, value: Any, where: str = "compress") -> str:
    """`value` (None: the policy's default) if the policy supports it; ValueError naming `where`, the
    policy and the allowed values otherwise."""
    allowed, default = policy_protocols(policy)
    if value is None:
        return default
    if value not in allowed:
        raise ValueError(f"{where}: policy {policy!r} does not support compress={value!r}; allowed: "
                         f"{', '.join(allowed)}")
    return value


def key_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a cell config its run key hashes: all of it, less `compress` when that is the
    policy's default (cells that ran the default before the field existed keep their keys)."""
    if "compress" in config and config["compress"] == default_protocol(str(config.get("policy"))):
        return {k: v for k, v in config.items() if k != "compress"}
    return config


def check_status(status: Any) -> str:
    """A run status; ValueError naming the allowed ones."""
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; allowed: {', '.join(RUN_STATUSES)}")
    return status
