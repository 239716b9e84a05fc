"""Pure data functions of the dashboard: run records -> pandas DataFrames.

Nothing here imports Streamlit, so every view's numbers are testable as plain data.
A run record is the dict `services.store.Store.runs()` returns (see docs/DESIGN.md);
`records_frame` flattens a list of them into one row per run with a few derived columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from services.declaration import DONE, FAILED, FINISHED_STATUSES, METRIC_FIELDS, PENDING, RUN_STATUSES
from services.declaration import METRICS as DECLARED_METRICS
from services.model_base import base_model
from services.store.keys import CODE_VERSION

# Run statuses (services.declaration). `done` and `failed` are final; the others count as pending.
PENDING_STATUSES = tuple(s for s in RUN_STATUSES if s not in FINISHED_STATUSES)

# Metric columns of a run record, in the order the views show them: the declared metrics, with
# the perplexity of lm_text (derived from extras) after accuracy.
METRICS = (METRIC_FIELDS[0], "perplexity", *METRIC_FIELDS[1:])
# Where a record keeps its perplexity (lm_text: `extras.ppl`; `perplexity` also accepted).
PERPLEXITY_KEYS = ("ppl", "perplexity")
# Which direction is better, per metric a chart may put on its y axis (from the declaration).
HIGHER_IS_BETTER = {"perplexity": False,
                    **{m.name: m.higher_is_better for m in DECLARED_METRICS if m.higher_is_better is not None}}

# The protocol of a cell without a `compress` field: the policy's default (the policy classes'
# `default_protocol`, through services.declaration.default_protocol; copied here so that reading the
# store never imports torch; a test checks the two agree).
DEFAULT_PROTOCOL = {"snapkv": "prompt"}
DEFAULT_PROTOCOL_OTHERS = "streaming"
# Workload parameters that are not part of a setting's name (shown in the tooltip instead).
_SETTING_QUIET = ("context_length", "n_examples")

_DICT_FIELDS = ("policy_params", "workload_params", "environment", "extras", "config")
_COLUMNS = (
    "run_key", "sweep", "model", "adapter", "base", "variant", "origin", "real", "policy", "compress", "budget",
    "workload", "setting", "setting_params", "seed", "code_version", "stale", "status", "error",
    "attempts", "started_at", "finished_at", "updated_at", "n_examples", *METRICS, "full_cache_fraction",
    "context_length", *_DICT_FIELDS,
)


def _as_dict(value: Any) -> dict:
    """A JSON column as a dict: dicts pass, JSON text is parsed, anything else is {}."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def model_label(model: str | None, adapter: str | None) -> str | None:
    """The dashboard's name of a model: "base + adapter-folder-name" with an adapter (a base given as a
    folder path by its folder name: models/smollm2-135m-instruct + its adapter is the variant
    "smollm2-135m-instruct + smollm2-135m-nats", as services.model_base names it), else the model as named."""
    if not adapter or model is None:
        return model

    def folder_name(path: str) -> str:
        return str(path).rstrip("/").rsplit("/", 1)[-1] or str(path)

    return f"{folder_name(model)} + {folder_name(adapter)}"


def protocol_of(policy: str, compress: str | None) -> str:
    """The compression protocol a cell ran: its `compress` field, else the policy's default."""
    if compress:
        return str(compress)
    return DEFAULT_PROTOCOL.get(str(policy), DEFAULT_PROTOCOL_OTHERS)


def base_of(model: str | None, adapter: str | None, extras: dict) -> dict:
    """The base model of a run (`services.model_base.base_model`): what the run recorded in
    `extras.model_info.base_model`, else derived now from the model name and adapter (older rows)."""
    info = extras.get("model_info") if isinstance(extras.get("model_info"), dict) else {}
    recorded = info.get("base_model")
    if isinstance(recorded, dict) and recorded.get("base"):
        return recorded
    return base_model(str(model or ""), adapter or None)


def setting_name(workload: str, context_length: Any) -> str:
    """A workload setting's name: "passkey @1024" (the workload alone without a context length)."""
    ctx = _number(context_length)
    return workload if math.isnan(ctx) else f"{workload} @{int(ctx)}"


def setting_params(workload_params: dict) -> str:
    """The workload parameters besides the context length, as "k=v, k=v" (sorted; '' when none)."""
    return ", ".join(f"{k}={workload_params[k]}" for k in sorted(workload_params) if k not in _SETTING_QUIET)


def _number(value: Any) -> float:
    """A float, or NaN for None / non-numeric values."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def records_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per run record, with derived columns.

    Derived: `budget` (from the record, else `policy_params["budget"]`), `perplexity`
    (from `extras["ppl"]` or `extras["perplexity"]`: the `lm_text` metric has no accuracy), `context_length`
    (from `workload_params["context_length"]`). Metric columns are floats (NaN when missing),
    timestamps are UTC datetimes. An empty input gives an empty frame with every column.
    """
    rows = []
    for rec in records:
        row = {col: rec.get(col) for col in _COLUMNS if col not in _DICT_FIELDS}
        for field in _DICT_FIELDS:
            row[field] = _as_dict(rec.get(field))
        extras, wparams = row["extras"], row["workload_params"]
        # base + NAtS adapter is one model: the label names both (the base alone stays `model`)
        row["adapter"] = row["config"].get("adapter") or rec.get("adapter")
        base = base_of(row["model"], row["adapter"], extras)
        row["model"] = model_label(row["model"], row["adapter"])
        row["base"], row["origin"], row["real"] = base["base"], base.get("origin", ""), bool(base.get("real"))
        row["variant"] = row["model"]  # the model as run (the base's name for a run on the base)
        row["compress"] = protocol_of(row["policy"], rec.get("compress") or row["config"].get("compress"))
        row["setting"] = setting_name(str(row["workload"] or ""), wparams.get("context_length"))
        row["setting_params"] = setting_params(wparams)
        if row.get("budget") is None:
            row["budget"] = row["policy_params"].get("budget")
        if row.get("perplexity") is None:
            row["perplexity"] = next((extras[k] for k in PERPLEXITY_KEYS if extras.get(k) is not None), None)
        row["context_length"] = wparams.get("context_length")
        if row.get("n_examples") is None:  # older records: count the examples the run kept
            examples = extras.get("examples")
            row["n_examples"] = len(examples) if isinstance(examples, list) else row["config"].get("n_examples")
        # a run of an older code version: its numbers are not what this code computes (marked,
        # left out of comparisons; a sweep reruns the cell under a new key)
        row["stale"] = row["code_version"] is not None and row["code_version"] != CODE_VERSION
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(_COLUMNS))
    for col in (*METRICS, "budget", "context_length", "seed", "attempts", "n_examples"):
        df[col] = pd.to_numeric(df[col].map(_number), errors="coerce").astype(float)
    # the bytes held as a fraction of what the full cache holds for the same tokens (x axis option)
    full = df["kv_bytes_full"].where(df["kv_bytes_full"] > 0)
    df["full_cache_fraction"] = (df["kv_bytes_physical"] / full).astype(float)
    for col in ("started_at", "finished_at", "updated_at"):
        df[col] = pd.to_datetime(df[col], errors="coerce", utc=True)
    for col in ("sweep", "model", "adapter", "base", "variant", "origin", "policy", "compress", "workload", "setting",
                "setting_params", "status", "run_key"):
        df[col] = df[col].fillna("").astype(str)
    df["stale"] = df["stale"].fillna(False).astype(bool)
    df["real"] = df["real"].fillna(False).astype(bool)
    return df


def wilson_interval(accuracy: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion `accuracy` measured on `n`
    examples; (NaN, NaN) without an accuracy or examples. A fractional per-example score (e.g.
    kv_recall's accuracy per query) is treated as a proportion of `n` examples."""
    if pd.isna(accuracy) or pd.isna(n) or n <= 0:
        return math.nan, math.nan
    p = min(max(float(accuracy), 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def with_intervals(df: pd.DataFrame, n_col: str = "n_examples") -> pd.DataFrame:
    """`df` with `ci_low` / `ci_high`: the Wilson 95% interval of each row's accuracy on its
    `n_col` examples."""
    out = df.copy()
    bounds = [wilson_interval(a, n) for a, n in zip(out["accuracy"], out[n_col], strict=True)]
    out["ci_low"] = [b[0] for b in bounds]
    out["ci_high"] = [b[1] for b in bounds]
    return out


def interval_label(accuracy: float, low: float, high: float) -> str:
    """'0.850 [0.780, 0.900]', or '' without an accuracy."""
    if pd.isna(accuracy):
        return ""
    return f"{accuracy:.3f}" if pd.isna(low) else f"{accuracy:.3f} [{low:.3f}, {high:.3f}]"


def default_workload(df: pd.DataFrame, model: str | None = None) -> str | None:
    """The workload a leaderboard opens on: the one where the full cache scores best (highest mean
    full-cache accuracy of `model`, else of any model), so the first table shows policies against a
    reference that solves the task; without full-cache accuracy the one with the best accuracy of
    any policy, then a perplexity workload, then the first name."""
    done = df[df["status"] == DONE]
    mine = done if model is None else done[done["model"] == model]
    names = sorted(mine["workload"].unique().tolist())
    if not names:
        return None
    for rows in (mine[mine["policy"] == "full"], done[(done["policy"] == "full") & done["workload"].isin(names)],
                 mine):
        scored = rows[rows["accuracy"].notna()]
        if len(scored):
            means = scored.groupby("workload")["accuracy"].mean()
            return str(means.sort_index().idxmax())  # ties: the first name
    with_ppl = sorted(mine[mine["perplexity"].notna()]["workload"].unique().tolist())
    return with_ppl[0] if with_ppl else names[0]


def budget_label(budget: float) -> str:
    """'none' for a run without a budget (e.g. the full cache), else the budget as a short number ('0.25')."""
    return "none" if pd.isna(budget) else f"{budget:g}"


def filter_runs(
    df: pd.DataFrame,
    *,
    sweeps: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    workloads: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    bases: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    budget_range: tuple[float, float] | None = None,
    include_unbudgeted: bool = True,
    include_stale: bool = False,
) -> pd.DataFrame:
    """The rows matching every given filter (None = no filter on that column).

    `budget_range` is inclusive; runs without a budget (e.g. the full cache) stay in
    when `include_unbudgeted` is true. Runs of older code versions (`stale`) are left out
    unless `include_stale`: their numbers are not what this code computes.
    """
    keep = pd.Series(True, index=df.index) if include_stale else ~df["stale"]
    for col, allowed in (("sweep", sweeps), ("model", models), ("workload", workloads), ("policy", policies),
                         ("base", bases), ("compress", protocols)):
        if allowed is not None:
            keep &= df[col].isin(list(allowed))
    if budget_range is not None:
        lo, hi = budget_range
        in_range = df["budget"].between(lo, hi)
        keep &= in_range | (df["budget"].isna() & include_unbudgeted)
    return df[keep]


def sweep_overview(df: pd.DataFrame, sweeps: Iterable[str | dict] = ()) -> pd.DataFrame:
    """Per sweep: total, done, failed, pending run counts, progress and the last update time of
    its runs of this code version, and `stale`: its runs of older code versions.

    `sweeps` lists the store's sweeps, as names or as the dicts `Store.sweeps()` returns
    (`name`, `counts` per status, `updated_at`); a dict's counts are used as they are (they
    count runs shared with other sweeps too), other sweeps are counted from `df`. Sweeps
    without runs get zeros. Sorted by last update, newest first.
    """
    cols = ["sweep", "runs", DONE, FAILED, PENDING, "progress", "last_update", "stale"]  # run counts per status
    given: dict[str, dict] = {}
    for item in sweeps:
        entry = item if isinstance(item, dict) else {"name": item}
        if entry.get("name"):
            given[str(entry["name"])] = entry
    times = [c for c in ("updated_at", "finished_at", "started_at") if c in df.columns]
    last = df[times].max(axis=1) if len(df) else pd.Series(dtype="datetime64[ns, UTC]")
    work = df.assign(_last=last)
    rows = []
    for name in dict.fromkeys([*given, *sorted(df["sweep"].unique())]):
        entry, part = given.get(name, {}), work[work["sweep"] == name]
        counts = entry.get("counts")
        if isinstance(counts, dict):
            n_done, n_failed = int(counts.get(DONE, 0)), int(counts.get(FAILED, 0))
            n = int(sum(counts.values()))
            n_stale = int(entry.get("stale") or 0)
            updated = pd.to_datetime(entry.get("updated_at"), utc=True, errors="coerce")
        else:
            n_stale = int(part["stale"].sum())
            part = part[~part["stale"]]  # older code versions: reported apart, not as this sweep's progress
            n_done = int((part["status"] == DONE).sum())
            n_failed = int((part["status"] == FAILED).sum())
            n = len(part)
            updated = part["_last"].max() if n else pd.NaT
        rows.append({
            "sweep": name, "runs": n, DONE: n_done, FAILED: n_failed, PENDING: n - n_done - n_failed,
            "progress": (n_done + n_failed) / n if n else 0.0, "last_update": updated, "stale": n_stale,
        })
    out = pd.DataFrame(rows, columns=cols)
    out["last_update"] = pd.to_datetime(out["last_update"], utc=True)
    return out.sort_values("last_update", ascending=False, na_position="last").reset_index(drop=True)


def leaderboard(df: pd.DataFrame, model: str | None = None, workload: str | None = None, *,
                base: str | None = None) -> pd.DataFrame:
    """Finished runs of one model (or of every variant of one `base`: the base itself, its fine-tuned
    checkpoints, base + adapter) and workload, one row per (variant, policy, budget, protocol), seeds averaged.

    Columns: variant, policy, compress, budget, accuracy, ci_low, ci_high, n, perplexity, kept_fraction,
    kv_bytes_physical, kv_bytes_full, ttft_s, tpot_s, tokens_per_s, runs. `n` is the examples of
    the runs with an accuracy summed, `ci_low` / `ci_high` the Wilson 95% interval of the accuracy
    on those `n` examples. Sorted by accuracy (else perplexity), best first.
    """
    part = df[df["status"] == DONE]
    if model is not None:
        part = part[part["model"] == model]
    if base is not None:
        part = part[part["base"] == base]
    if workload is not None:
        part = part[part["workload"] == workload]
    metrics = [m for m in METRICS if m != "peak_memory_bytes"]
    cols = ["variant", "policy", "compress", "budget", "accuracy", "ci_low", "ci_high", "n", *metrics[1:], "runs"]
    if part.empty:
        return pd.DataFrame(columns=cols)
    part = part.assign(n=part["n_examples"].where(part["accuracy"].notna()))
    grouped = part.groupby(["variant", "policy", "compress", "budget"], dropna=False)
    out = grouped[metrics].mean().join(grouped["n"].sum(min_count=1)).join(grouped.size().rename("runs"))
    out = with_intervals(out.reset_index(), "n")
    if out["accuracy"].notna().any():
        out = out.sort_values(["accuracy", "kv_bytes_physical"], ascending=[False, True], na_position="last")
    else:
        out = out.sort_values(["perplexity", "kv_bytes_physical"], ascending=[True, True], na_position="last")
    return out[cols].reset_index(drop=True)


def best_per_policy(lb: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """From a leaderboard: each policy's best row by `metric` over its variants, budgets and protocols
    (ties: fewer KV bytes), best first."""
    higher = HIGHER_IS_BETTER.get(metric, True)
    rows = lb[lb[metric].notna()]
    if rows.empty:
        return rows
    rows = rows.sort_values([metric, "kv_bytes_physical"], ascending=[not higher, True])
    return rows.drop_duplicates("policy", keep="first").reset_index(drop=True)


def pareto_mask(x: pd.Series, y: pd.Series, *, higher_is_better: bool = True) -> pd.Series:
    """True for the points no other point dominates (x lower is better; y per `higher_is_better`).

    A point is dominated when another has x <= its x and a y at least as good, one of them
    strictly. Rows with a missing x or y are never on the frontier. Equal points are all kept.
    """
    mask = pd.Series(False, index=x.index)
    valid = x.notna() & y.notna()
    if not valid.any():
        return mask
    yy = y[valid] if higher_is_better else -y[valid]
    order = pd.DataFrame({"x": x[valid], "y": yy}).sort_values(["x", "y"], ascending=[True, False])
    best = -math.inf
    best_x = math.nan
    for idx, px, py in zip(order.index, order["x"], order["y"], strict=True):
        if py > best or (py == best and px == best_x):
            mask[idx] = True
            if py > best:
                best, best_x = py, px
    return mask


def pareto_frontier(
    df: pd.DataFrame, x: str, y: str, *, higher_is_better: bool | None = None,
    by: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """The Pareto-optimal rows of `df` (lower `x`, better `y`), per group of `by`, sorted by x.

    `higher_is_better` defaults from the metric name (accuracy: higher, perplexity: lower).
    """
    if higher_is_better is None:
        higher_is_better = HIGHER_IS_BETTER.get(y, True)
    if df.empty:
        return df.iloc[0:0]
    if by is None:
        mask = pareto_mask(df[x], df[y], higher_is_better=higher_is_better)
    else:
        mask = pd.Series(False, index=df.index)
        for _, part in df.groupby(by, sort=False):
            mask |= pareto_mask(part[x], part[y], higher_is_better=higher_is_better).reindex(
                df.index, fill_value=False)
    keys = [*([by] if isinstance(by, str) else list(by or [])), x]
    return df[mask].sort_values(keys)


def pareto_points(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The finished runs with both `x` and `y`, each flagged: `on_front` (no run of the same workload
    setting and base is at least as good in both, one strictly: the front over every variant and
    protocol of the base) and `best_protocol` (the run's protocol is its policy's best one in that
    setting and base: highest mean `y`, ties fewer mean `x`; False where the policy ran one protocol).
    Sorted by setting, base, x."""
    higher = HIGHER_IS_BETTER.get(y, True)
    part = df[(df["status"] == DONE) & df[x].notna() & df[y].notna()].copy()
    part["on_front"] = False
    part["best_protocol"] = False
    for _, group in part.groupby(["setting", "base"], sort=False):
        mask = pareto_mask(group[x], group[y], higher_is_better=higher)
        part.loc[mask[mask].index, "on_front"] = True
        for _, runs in group.groupby(["variant", "policy"], sort=False):
            if runs["compress"].nunique() < 2:
                continue
            means = runs.groupby("compress")[[y, x]].mean()
            means = means.sort_values([y, x], ascending=[not higher, True])
            part.loc[runs.index[runs["compress"] == means.index[0]], "best_protocol"] = True
    return part.sort_values(["setting", "base", x]).reset_index(drop=True)


def full_cache_reference(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Per (setting, base): the full cache's `y` (mean over its full-policy runs, NaN without one)
    and where the full cache sits on `x` (`full_cache_fraction`: 1; bytes: the mean `kv_bytes_full`;
    kept fraction: 1): the reference lines of a Pareto panel."""
    cols = ["setting", "base", "x_full", "y_full"]
    if points.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (setting, base), group in points.groupby(["setting", "base"], sort=True):
        full = group[group["policy"] == "full"]
        x_full = group["kv_bytes_full"].mean() if x == "kv_bytes_physical" else 1.0
        rows.append({"setting": setting, "base": base, "x_full": x_full,
                     "y_full": full[y].mean() if len(full) else math.nan})
    return pd.DataFrame(rows, columns=cols)


def latency_by_context(df: pd.DataFrame) -> pd.DataFrame:
    """Finished runs with a context length, averaged per (base, model, policy, compress, budget,
    context_length): `model` is the variant run (the base, a fine-tuned checkpoint, base + adapter).

    Columns: base, model, policy, compress, budget, budget_label, context_length, tpot_s, ttft_s,
    kv_bytes_physical, kept_fraction, runs, tpot_ms, ttft_ms.
    """
    part = df[(df["status"] == DONE) & df["context_length"].notna()]
    keys = ["base", "model", "policy", "compress", "budget", "context_length"]
    vals = ["tpot_s", "ttft_s", "kv_bytes_physical", "kept_fraction"]
    if part.empty:
        return pd.DataFrame(columns=[*keys, "budget_label", *vals, "runs", "tpot_ms", "ttft_ms"])
    grouped = part.groupby(keys, dropna=False)
    out = grouped[vals].mean().join(grouped.size().rename("runs")).reset_index()
    out.insert(5, "budget_label", out["budget"].map(budget_label))
    out["tpot_ms"], out["ttft_ms"] = out["tpot_s"] * 1e3, out["ttft_s"] * 1e3
    return out.sort_values(keys).reset_index(drop=True)


def run_label(row: pd.Series) -> str:
    """A one-line name of a run for pickers: status, model, workload, policy, budget, seed."""
    seed = "" if pd.isna(row["seed"]) else f" seed {int(row['seed'])}"
    mark = {FAILED: "FAILED ", DONE: ""}.get(row["status"], f"{row['status'].upper()} ")
    if row.get("stale", False):
        mark = f"OLD CODE v{row['code_version']} {mark}"
    return (f"{mark}{row['policy']} @ {budget_label(row['budget'])} | {row['workload']} | "
            f"{row['model']}{seed} [{row['run_key'][:8]}]")


def run_metrics(row: pd.Series) -> pd.DataFrame:
    """The metrics of one run as a two-column table (metric, value); missing ones left out."""
    items = [(m, row[m]) for m in METRICS if not pd.isna(row[m])]
    for key, value in sorted(row["extras"].items()):
        if key not in PERPLEXITY_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
            items.append((f"extras.{key}", value))
    return pd.DataFrame(items, columns=["metric", "value"])
