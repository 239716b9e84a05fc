"""The dashboard's views: one function per page, each rendering from a `Context`.

Views only lay out Streamlit elements; the numbers come from `dashboard.data` and the charts
from `dashboard.charts`, both pure functions tested as data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import charts, data, paper_reference, source

SWEEP_HINT = "natsbench sweep configs/smoke.yaml"


@dataclass
class Context:
    """What every view gets: the store URL, all runs, the filtered runs, the sweeps (dicts of
    `Store.sweeps()`), the policy names (fixed colour order) and `load` to re-read the store
    (cached)."""

    url: str
    all_runs: pd.DataFrame
    runs: pd.DataFrame
    sweeps: list[dict]
    policies: list[str]
    load: Callable[[], tuple]


def empty_store(url: str, problem: str | None, sweeps: list[dict]) -> None:
    """The page for a store without runs: how to fill it."""
    st.title("natsbench dashboard")
    st.info(f"No runs in the result store `{source.display_url(url)}` yet"
            + (f" ({problem})." if problem else ".") + " Run a sweep to fill it:", icon=":material/info:")
    st.code(f"{SWEEP_HINT} --db {source.display_url(url)}\nnatsbench dashboard --db {source.display_url(url)}",
            language="bash")
    st.markdown("A sweep file names models x policies x budgets x workloads x seeds; every finished "
                "cell lands in the store and appears here (the page re-reads the store every few seconds). "
                "`natsbench results` prints the same runs as a table.")
    if sweeps:
        st.caption("Sweeps registered without runs: " + ", ".join(str(s.get("name")) for s in sweeps))


def _count_metrics(df: pd.DataFrame) -> None:
    cols = st.columns(4)
    cols[0].metric("runs", len(df))
    cols[1].metric("done", int((df["status"] == data.DONE).sum()))
    cols[2].metric("failed", int((df["status"] == data.FAILED).sum()))
    cols[3].metric("pending / running", int((~df["status"].isin([data.DONE, data.FAILED])).sum()))


def overview(ctx: Context) -> None:
    st.title("Overview")
    st.caption("Every sweep in the store with its run counts. Counts ignore the sidebar filters.")
    auto = st.toggle("Auto-refresh every 10 s", value=False, key="auto_refresh",
                     help="Re-reads the store while a sweep is running.")

    @st.fragment(run_every=10 if auto else None)
    def body() -> None:
        df, sweeps, _, read_at = ctx.load()
        _count_metrics(df)
        table = data.sweep_overview(df, sweeps)
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            "pending": st.column_config.NumberColumn("pending / running"),
            "progress": st.column_config.ProgressColumn("finished", format="percent", min_value=0, max_value=1),
            "stale": st.column_config.NumberColumn("older code", help="runs of older code versions (not counted)"),
            "last_update": st.column_config.DatetimeColumn("last update (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        })
        st.altair_chart(charts.overview_chart(table), width="stretch")
        st.caption(f"Read at {read_at}.")

    body()


def _leaderboard_display(lb: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with friendly units for the screen (ms, KiB); the CSV keeps SI units."""
    out = lb.copy()
    out["budget"] = out["budget"].map(data.budget_label)
    out["kv_kib_physical"] = out["kv_bytes_physical"] / 1024
    out["ttft_ms"] = out["ttft_s"] * 1e3
    out["tpot_ms"] = out["tpot_s"] * 1e3
    cols = ["variant", "policy", "compress", "budget", "accuracy", "ci_low", "ci_high", "n", "perplexity",
            "kept_fraction", "kv_kib_physical", "ttft_ms", "tpot_ms", "tokens_per_s", "runs"]
    # a metric no row has (e.g. accuracy on lm_text, bytes on a scoring-only workload) is left out
    keep = ("variant", "policy", "compress", "budget", "runs")
    return out[[c for c in cols if c in keep or out[c].notna().any()]]


def _best_per_policy(lb: pd.DataFrame, metric: str) -> None:
    """A card per policy: its best `metric` and the kept fraction it needed."""
    best = data.best_per_policy(lb, metric)
    for start in range(0, len(best), 6):
        cols = st.columns(6)
        for col, (_, row) in zip(cols, best.iloc[start:start + 6].iterrows(), strict=False):
            kept = "" if pd.isna(row["kept_fraction"]) else f"{row['kept_fraction']:.0%} kept"
            ci = ""
            if metric == "accuracy" and not pd.isna(row["ci_low"]):
                ci = (f"; {data.interval_label(row['accuracy'], row['ci_low'], row['ci_high'])} "
                      f"(95% Wilson interval, n = {row['n']:.0f})")
            col.metric(row["policy"], f"{row[metric]:.3f}", delta=kept or None, delta_color="off",
                       delta_arrow="off", border=True,
                       help=f"best {metric} of {row['policy']} ({row['variant']}, {row['compress']} protocol, "
                            f"budget {data.budget_label(row['budget'])}){ci}")


def leaderboard(ctx: Context) -> None:
    st.title("Leaderboard")
    df = ctx.runs
    if df.empty:
        st.warning("No runs match the filters.")
        return
    c1, c2, c3 = st.columns(3)
    # the comparison unit is the base model: its own runs, its fine-tuned checkpoints, base + adapter
    bases = sorted(df["base"].unique())
    done = df[df["status"] == data.DONE]
    # opens on the base with the most finished runs (the widest comparison), ties: the first name
    counts = done["base"].value_counts()
    first_base = min(counts[counts == counts.max()].index) if len(counts) else bases[0]
    base = c1.selectbox("Base model", bases, index=bases.index(first_base), key="lb_base",
                        help="Runs of the base, of checkpoints fine-tuned from it and of base + adapter, ranked "
                             "together")
    mine = df[df["base"] == base]
    workloads = sorted(mine["workload"].unique())
    # opens on the workload the full cache solves best, not on the first name
    first = data.default_workload(mine)
    workload = c2.selectbox("Workload", workloads, index=workloads.index(first) if first in workloads else 0,
                            key="lb_workload")
    part = mine[mine["workload"] == workload]
    contexts = sorted(part["context_length"].dropna().unique().tolist())
    ctx_choice = c3.selectbox("Context length", ["all (averaged)", *[int(c) for c in contexts]], key="lb_ctx",
                              disabled=len(contexts) < 2)
    if ctx_choice != "all (averaged)":
        part = part[part["context_length"] == ctx_choice]
    lb = data.leaderboard(part, workload=workload, base=base)
    if lb.empty:
        st.warning(f"No finished runs of base {base} on {workload} under these filters.")
        return
    metric = "accuracy" if lb["accuracy"].notna().any() else "perplexity"
    ci = (" 95% CI: Wilson interval of the accuracy on the n examples of the row's runs."
          if metric == "accuracy" else "")
    origins = "; ".join(f"{v}: {o}" for v, o in part[["variant", "origin"]].drop_duplicates().itertuples(index=False))
    st.caption(f"Base {base} on {workload}: one row per model variant, policy, protocol and budget (seeds "
               f"averaged), sorted by {metric}. Click a column header to sort.{ci} Variants: {origins}.")
    _best_per_policy(lb, metric)
    st.dataframe(_leaderboard_display(lb), hide_index=True, width="stretch", height=min(38 + 35 * len(lb), 800),
                 column_config={
        "accuracy": st.column_config.ProgressColumn("accuracy", format="%.3f", min_value=0, max_value=1),
        "ci_low": st.column_config.NumberColumn("95% CI low", format="%.3f",
                                                help="Wilson 95% interval of the accuracy, lower end"),
        "ci_high": st.column_config.NumberColumn("95% CI high", format="%.3f",
                                                 help="Wilson 95% interval of the accuracy, upper end"),
        "n": st.column_config.NumberColumn("n", format="%d", help="examples behind the accuracy (all runs)"),
        "perplexity": st.column_config.NumberColumn("perplexity", format="%.3f"),
        "kept_fraction": st.column_config.NumberColumn("kept fraction", format="percent"),
        "kv_kib_physical": st.column_config.NumberColumn("KV held (KiB)", format="%.1f"),
        "ttft_ms": st.column_config.NumberColumn("TTFT (ms)", format="%.2f"),
        "tpot_ms": st.column_config.NumberColumn("TPOT (ms)", format="%.3f"),
        "tokens_per_s": st.column_config.NumberColumn("tokens/s", format="%.0f"),
    })
    st.download_button("Download CSV", lb.to_csv(index=False).encode(), file_name=f"leaderboard_{base}_{workload}.csv",
                       mime="text/csv", icon=":material/download:")


def pareto(ctx: Context) -> None:
    st.title("Pareto: quality vs memory")
    df = ctx.runs
    c1, c2 = st.columns(2)
    x_names = {"kv_bytes_physical": "physical KV bytes", "full_cache_fraction": "fraction of the full cache",
               "kept_fraction": "kept fraction (tokens)"}
    x = c1.radio("x axis", list(charts.PARETO_X), horizontal=True, key="pareto_x", format_func=x_names.get,
                 help="Bytes held, or those bytes as a fraction of what the full cache holds in the same setting")
    has_acc = df["accuracy"].notna().any()
    y = c2.radio("y axis", ["accuracy", "perplexity"], index=0 if has_acc else 1, horizontal=True, key="pareto_y")
    done = df[df["status"] == data.DONE]
    shown = done[done[x].notna() & done[y].notna()]
    if shown.empty:
        other = "perplexity" if y == "accuracy" else "accuracy"
        hint = f" Runs with {other} exist: switch the y axis." if done[other].notna().any() else ""
        st.warning(f"No finished runs with both {x} and {y} under these filters.{hint}")
        return
    st.altair_chart(charts.pareto_chart(df, x, y, policies=ctx.policies))
    missing = len(done) - len(shown)
    if missing:
        other = "perplexity" if y == "accuracy" else "accuracy"
        st.caption(f"{missing} finished runs have no {y} and are not shown (lm_text reports perplexity, "
                   f"the task workloads accuracy): switch the y axis to {other} to see them.")
    st.caption("A panel per workload setting (workload @ context length; other parameters in the tooltip), and "
               "per base model where several bases ran the setting. The dashed front is the panel's base's, over "
               "its variants (marker shape: the base, a fine-tuned "
               "checkpoint, base + adapter) and protocols (marker fill: streaming filled, prompt half, context "
               "hollow; a ring: the policy's best protocol where it ran several).")
    front = data.pareto_frontier(shown, x, y, by=["setting", "base"])
    with st.expander(f"Runs on the fronts ({len(front)})", expanded=False):
        st.dataframe(front[["setting", "base", "variant", "policy", "compress", "budget", x, y, "run_key"]],
                     hide_index=True, width="stretch")


def latency_memory(ctx: Context) -> None:
    st.title("Latency and memory vs context length")
    lat = data.latency_by_context(ctx.runs)
    if lat.empty:
        st.warning("No finished runs with a context length (workload_params.context_length) under these filters.")
        return
    budgets = sorted(lat["budget"].dropna().unique().tolist())
    budget = None
    if budgets:
        budget = st.segmented_control("Budget", budgets, default=budgets[len(budgets) // 2], key="lat_budget",
                                      format_func=data.budget_label, required=True)
        st.caption("Policies at this budget, with the runs without a budget (full cache) as the reference.")
    # one chart per metric, stacked: a chart with a panel per model wraps its panels in rows of
    # two, so it fits the page (side-by-side columns cut the second panel and the legend off)
    for metric in ("tpot_ms", "kv_bytes_physical", "ttft_ms", "kept_fraction"):
        chart = charts.latency_chart(ctx.runs, metric, budget=budget, policies=ctx.policies)
        st.altair_chart(chart, width="stretch" if isinstance(chart, alt.Chart) else "content")
    with st.expander("The numbers (every budget)", expanded=False):
        st.dataframe(lat, hide_index=True, width="stretch")


def run_detail(ctx: Context) -> None:
    st.title("Run detail")
    df = ctx.runs
    if df.empty:
        st.warning("No runs match the filters.")
        return
    failed = df[df["status"] == data.FAILED]
    if len(failed):
        st.subheader(f"Failed runs ({len(failed)})")
        st.dataframe(failed[["policy", "budget", "workload", "model", "seed", "attempts", "error", "run_key"]],
                     hide_index=True, width="stretch")
    order = df.assign(_f=(df["status"] != data.FAILED)).sort_values(["_f", "workload", "policy", "budget"])
    labels = {key: data.run_label(row) for key, row in order.set_index("run_key", drop=False).iterrows()}
    chosen = st.selectbox("Run", list(labels), format_func=labels.get, key="run_key")
    row = df[df["run_key"] == chosen].iloc[0]
    status = row["status"]
    badge = {data.DONE: ":green-badge[done]", data.FAILED: ":red-badge[failed]"}.get(status, f":gray-badge[{status}]")
    if row["stale"]:
        badge += f" :orange-badge[old code version {row['code_version']}]"
    st.markdown(f"{badge} `{row['run_key']}` in sweep **{row['sweep']}**, attempts: {row['attempts']:g}; "
                f"model **{row['variant']}** ({row['origin']}), base **{row['base']}**, protocol "
                f"**{row['compress']}**")
    if row["stale"]:
        st.warning(f"This run was measured by code version {row['code_version']}, not by this code "
                   f"({data.CODE_VERSION}): its numbers may differ from what this code computes. A sweep reruns "
                   "the cell under a new key.")
    if status == data.FAILED:
        st.error(row["error"] or "failed without an error message")
        if row["extras"].get("traceback"):
            with st.expander("Traceback"):
                st.code(str(row["extras"]["traceback"]), language="text")
    if isinstance(row["extras"].get("metric"), str):
        st.caption(f"Workload metric: {row['extras']['metric']}")
    c1, c2 = st.columns(2)
    c1.subheader("Metrics")
    metrics = data.run_metrics(row)
    if metrics.empty:
        c1.caption("No metrics (the run did not finish).")
    else:
        c1.dataframe(metrics, hide_index=True, width="stretch")
    c1.subheader("Environment")
    c1.json(row["environment"], expanded=True)
    c2.subheader("Config")
    config = row["config"] or {k: row[k] for k in ("model", "policy", "policy_params", "workload", "workload_params")}
    c2.json(config, expanded=True)
    times = [f"{k}: {row[k]}" for k in ("started_at", "finished_at") if not pd.isna(row[k])]
    if times:
        c2.caption(" | ".join(times))


def paper(ctx: Context) -> None:
    st.title("Paper reference")
    st.warning(paper_reference.SOURCE_NOTE, icon=":material/menu_book:")
    published = paper_reference.align_policy_names(paper_reference.published_kept_fractions(), ctx.policies)
    st.altair_chart(charts.paper_reference_chart(ctx.runs, published, policies=ctx.policies))
    c1, c2 = st.columns([3, 2])
    c1.subheader("Published kept fractions")
    c1.dataframe(published, hide_index=True, width="stretch", column_config={
        "kept_low": st.column_config.NumberColumn("kept from", format="percent"),
        "kept_high": st.column_config.NumberColumn("kept to", format="percent"),
    })
    c2.subheader("Published efficiency (H100)")
    c2.dataframe(paper_reference.published_efficiency(), hide_index=True, width="stretch")
    ours = ctx.runs[(ctx.runs["status"] == data.DONE) & ctx.runs["kept_fraction"].notna()]
    if len(ours):
        st.subheader("Measured here")
        summary = ours.groupby("policy")["kept_fraction"].agg(["min", "median", "max", "count"]).reset_index()
        st.dataframe(summary, hide_index=True, width="stretch")
        st.caption("Our runs use tiny models and synthetic workloads; compare shapes, not absolute numbers.")


VIEWS: dict[str, Callable[[Context], None]] = {
    "Overview": overview,
    "Leaderboard": leaderboard,
    "Pareto": pareto,
    "Latency and memory": latency_memory,
    "Run detail": run_detail,
    "Paper reference": paper,
}
