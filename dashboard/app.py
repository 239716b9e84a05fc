"""natsbench dashboard: compare KV-cache policies from the result store (read-only).

Run with `natsbench dashboard [--db URL]`, or `streamlit run dashboard/app.py -- --db URL`.
The store URL comes from `--db` after `--`, else $NATSBENCH_DB_URL, else the SQLite file
under results/. The page is a sidebar (view, filters) and one view; the views live in
`dashboard/views.py`, their numbers in `dashboard/data.py`, their charts in `dashboard/charts.py`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import streamlit as st

try:
    from dashboard import data, source, views
except ModuleNotFoundError:  # run as a plain script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dashboard import data, source, views

CACHE_TTL_S = 5  # short, so a running sweep's counts move on every rerun / refresh


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Reading the result store ...")
def load(url: str) -> tuple:
    """(runs DataFrame, sweep names, problem, read time) of the store at `url`."""
    snap = source.load_runs(url)
    return data.records_frame(snap.runs), snap.sweeps, snap.problem, time.strftime("%H:%M:%S")


def sidebar_filters(df):
    """The sidebar filters; returns the filtered frame."""
    side = st.sidebar
    side.subheader("Filters")

    def pick(label: str, col: str, key: str):
        options = sorted(df[col].unique().tolist())
        chosen = side.multiselect(label, options, default=[], key=key, placeholder=f"all {label.lower()}")
        return chosen if chosen else options

    sweeps = pick("Sweeps", "sweep", "f_sweep")
    bases = pick("Base models", "base", "f_base")
    models = pick("Models", "model", "f_model")
    workloads = pick("Workloads", "workload", "f_workload")
    policies = pick("Policies", "policy", "f_policy")
    protocols = pick("Protocols", "compress", "f_compress")
    budgets = df["budget"].dropna()
    budget_range, include_none = None, True
    if len(budgets):
        lo, hi = float(budgets.min()), float(budgets.max())
        if hi > lo:
            budget_range = side.slider("Budget (kept fraction asked for)", lo, hi, (lo, hi), key="f_budget",
                                        format="%.3f")
        include_none = side.checkbox("Include runs without a budget (full cache)", value=True, key="f_nobudget")
    n_stale = int(df["stale"].sum())
    include_stale = n_stale > 0 and side.checkbox(
        f"Include {n_stale} runs of older code versions", value=False, key="f_stale",
        help=f"Measured by code older than version {data.CODE_VERSION}: marked OLD, never compared by default.")
    return data.filter_runs(df, sweeps=sweeps, models=models, workloads=workloads, policies=policies,
                            bases=bases, protocols=protocols, budget_range=budget_range, include_unbudgeted=include_none, include_stale=include_stale)


def main() -> None:
    st.set_page_config(page_title="natsbench", page_icon=":material/monitoring:", layout="wide")
    url = source.resolve_db_url(sys.argv[1:])

    views_by_name = views.VIEWS
    names = list(views_by_name)
    wanted = st.query_params.get("view", names[0])
    index = names.index(wanted) if wanted in names else 0
    st.sidebar.title("natsbench")
    st.sidebar.caption("KV-cache policies compared on equal terms: bytes are bytes held.")
    view = st.sidebar.radio("View", names, index=index, key="view")
    if st.query_params.get("view") != view:
        st.query_params["view"] = view

    try:
        df, sweeps, problem, read_at = load(url)
    except Exception as exc:  # bad URL, server down, old schema: say so, do not crash
        st.title(view)
        st.error(f"Could not read the result store at `{source.display_url(url)}`: {exc}")
        st.info("Check `--db` / `$NATSBENCH_DB_URL`, and run `natsbench db upgrade --db URL` "
                "if the schema is old.")
        return

    if st.sidebar.button("Refresh now", icon=":material/refresh:"):
        load.clear()
        st.rerun()
    st.sidebar.caption(f"Store: `{source.display_url(url)}` (read-only), read at {read_at}, "
                       f"cached {CACHE_TTL_S} s.")

    if df.empty:
        views.empty_store(url, problem, sweeps)
        return

    filtered = sidebar_filters(df)
    ctx = views.Context(url=url, all_runs=df, runs=filtered, sweeps=sweeps,
                        policies=sorted(df["policy"].unique().tolist()), load=lambda: load(url))
    views_by_name[view](ctx)


main()
