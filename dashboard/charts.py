"""Altair charts of the dashboard, as pure functions of DataFrames from `dashboard.data`.

Every function returns an Altair chart object and touches no Streamlit state, so the
tests check the specs as data (`chart.to_dict()`). Colours are fixed per policy through
`policy_scale`, so a policy has the same colour in every view.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import altair as alt
import pandas as pd

from dashboard import paper_reference
from dashboard.data import (
    DONE,
    FAILED,
    PENDING,
    full_cache_reference,
    latency_by_context,
    pareto_points,
    with_intervals,
)
from services.declaration import METRICS as DECLARED_METRICS
from services.declaration import PROTOCOLS

# Ten distinguishable colours (Tableau 10); NAtS gets the first one when present.
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2",
           "#eeca3b", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac")
STATUS_COLORS = {DONE: "#54a24b", FAILED: "#e45756", PENDING: "#bab0ac"}
AXIS_TITLES = {
    "accuracy": "accuracy", "perplexity": "perplexity (lower is better)",
    "kv_bytes_physical": "physical KV bytes held", "kept_fraction": "kept fraction of the KV cache",
    "tpot_s": "time per output token (s)", "ttft_s": "time to first token (s)",
    "tpot_ms": "time per output token (ms)", "ttft_ms": "time to first token (ms)",
    "context_length": "context length (tokens)",
    "full_cache_fraction": "KV bytes held / the full cache's",
}
_BYTES = {m.name for m in DECLARED_METRICS if m.unit == "bytes"}  # formatted as 1.2M etc.
_TOOLTIP = ("policy", "budget", "model", "workload", "seed", "sweep", "run_key")


def policy_scale(policies: Sequence[str]) -> alt.Scale:
    """A colour scale with a fixed colour per policy name (NAtS first, then alphabetical)."""
    names = sorted(set(policies), key=lambda p: (p.lower() != "nats", p))
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    return alt.Scale(domain=names, range=colors)


def _axis(col: str) -> alt.Axis:
    fmt = {"kept_fraction": ".0%", "full_cache_fraction": ".0%", "accuracy": ".2f"}.get(col, ".2~s" if col in _BYTES else None)
    # labels that would overlap are dropped (a log axis labels every 100k..900k otherwise)
    style = {"title": AXIS_TITLES.get(col, col), "labelOverlap": "greedy", "labelSeparation": 6}
    return alt.Axis(format=fmt, **style) if fmt else alt.Axis(**style)


def _tooltip(cols: Sequence[str]) -> list[alt.Tooltip]:
    out = []
    for col in cols:
        if col in _BYTES:
            out.append(alt.Tooltip(f"{col}:Q", format=",.0f", title=col))
        elif col in ("accuracy", "kept_fraction", "perplexity", "tpot_s", "ttft_s", "tpot_ms", "ttft_ms", "budget"):
            out.append(alt.Tooltip(f"{col}:Q", format=".4~g", title=col))
        elif col == "full_cache_fraction":
            out.append(alt.Tooltip(f"{col}:Q", format=".1%", title="of the full cache"))
        elif col == "seed":
            out.append(alt.Tooltip(f"{col}:Q", format="d"))
        else:
            out.append(alt.Tooltip(f"{col}:N"))
    return out


# Pareto x axes: physical bytes held, those bytes as a fraction of the setting's full cache, kept tokens.
PARETO_X = ("kv_bytes_physical", "full_cache_fraction", "kept_fraction")
# Marker fill per compression protocol (services.declaration.PROTOCOLS): streaming filled, prompt half,
# context hollow (the stroke keeps the policy's colour).
PROTOCOL_FILL = {"streaming": 0.9, "prompt": 0.35, "context": 0.0}
PROTOCOL_LEGEND_RGB = "85, 85, 85"  # the protocol legend's symbols: this grey, filled as PROTOCOL_FILL says
PROTOCOL_LEGEND_COLOR = "#555555"
_PARETO_TIP = ("setting", "setting_params", "context_length", "base", "variant", "origin", "policy", "compress",
               "budget")


def _protocol_fill_expr(protocols: Sequence[str]) -> str:
    """A Vega expression: a protocol legend entry's fill (PROTOCOL_LEGEND_COLOR at the protocol's
    PROTOCOL_FILL opacity) from its protocol (`datum.value`)."""
    def rgba(p: str) -> str:
        return json.dumps(f"rgba({PROTOCOL_LEGEND_RGB}, {PROTOCOL_FILL[p]})")

    expr = rgba(protocols[-1])
    for p in reversed(protocols[:-1]):
        expr = f"datum.value === {json.dumps(p)} ? {rgba(p)} : {expr}"
    return expr


def pareto_data(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Finished runs with both `x` and `y` (`dashboard.data.pareto_points`: `on_front` per workload
    setting and base over every variant and protocol, `best_protocol` per policy), with the full cache's
    place per (setting, base) (`x_full`, `y_full`: the reference lines) and, for accuracy, each run's
    Wilson 95% interval."""
    points = pareto_points(df, x, y)
    cols = list(dict.fromkeys([*_PARETO_TIP, *_TOOLTIP, x, y, "kept_fraction", "kv_bytes_physical",
                               "kv_bytes_full", "full_cache_fraction", "n_examples", "on_front", "best_protocol"]))
    part = points[[c for c in cols if c in points.columns]].copy()
    if y == "accuracy":  # each run's Wilson 95% interval, drawn as an error bar
        part = with_intervals(part)
    ref = full_cache_reference(part, x, y)
    part = part.merge(ref, on=["setting", "base"], how="left")
    # the panel: the workload setting, and the base where several bases ran it (a real model's KV bytes are
    # orders of magnitude above a tiny model's: each base gets its own axes, its front and its full cache)
    shared = part.groupby("setting")["base"].transform("nunique") > 1
    part["panel"] = part["setting"].where(~shared, part["setting"] + " · " + part["base"].astype(str))
    return part.sort_values(["setting", "base", x]).reset_index(drop=True)


def pareto_chart(
    df: pd.DataFrame, x: str = "kv_bytes_physical", y: str = "accuracy", *,
    policies: Sequence[str] | None = None, log_x: bool | None = None, columns: int = 2,
) -> alt.FacetChart:
    """`y` against `x` per run, one panel per workload setting (workload and context length; the other
    workload parameters in the tooltip) and base model (a setting several bases ran gets a panel per base:
    `panel` is "setting · base" there), `columns` panels a row, each with its own x axis. Colour per
    policy, marker shape per variant (the base, a fine-tuned checkpoint, base + adapter), marker fill per
    protocol (its legend drawn through the opacity channel: Vega-Lite draws none for fillOpacity); the
    Pareto front of the panel's base (over its variants and protocols) as a dashed line, the full cache as
    grey reference lines (its size on x, its `y`), and a dark ring on the runs of each policy's best
    protocol where it ran several. Accuracy gets an error bar per run (Wilson 95%). `log_x` defaults to
    log when x spans more than 20x. Drawn as SVG (points readable in the page)."""
    if x not in PARETO_X:
        raise ValueError(f"pareto x={x!r}: use one of {', '.join(PARETO_X)}")
    data = pareto_data(df, x, y)
    if log_x is None:
        pos = data[x][data[x] > 0]
        log_x = bool(len(pos)) and float(pos.max()) > 20 * float(pos.min())
    xscale = alt.Scale(type="log", nice=False, padding=12) if log_x else alt.Scale(zero=False, padding=12)
    color = alt.Color("policy:N", scale=policy_scale(policies or data["policy"].unique().tolist()),
                      legend=alt.Legend(title="policy", orient="right"))
    protocols = [p for p in PROTOCOLS if p in set(data["compress"])] or list(PROTOCOLS)
    # an ordinal scale: each protocol its PROTOCOL_FILL (Vega-Lite's default for a nominal opacity is a point
    # scale, which spreads the range's ends over the domain: prompt 0.625, context 0.35)
    fill = alt.FillOpacity("compress:N", legend=None, scale=alt.Scale(
        type="ordinal", domain=protocols, range=[PROTOCOL_FILL[p] for p in protocols]))
    # Vega-Lite draws no legend for fillOpacity: the protocol legend comes from the opacity channel on the
    # same field (every protocol at the points' opacity 0.9), its symbols filled as the points are.
    protocol_legend = alt.Opacity("compress:N", scale=alt.Scale(type="ordinal", domain=protocols,
                                                                range=[0.9] * len(protocols)),
                                  legend=alt.Legend(title="protocol", orient="right", symbolStrokeWidth=2,
                                                    symbolStrokeColor=PROTOCOL_LEGEND_COLOR, symbolOpacity=1,
                                                    symbolFillColor=alt.ExprRef(_protocol_fill_expr(protocols))))
    tips = [*_PARETO_TIP, y, "kv_bytes_physical", "full_cache_fraction", "kept_fraction", "on_front",
            "best_protocol", "seed", "sweep", "run_key"]
    points = alt.Chart().mark_point(filled=True, strokeWidth=1.5).encode(
        x=alt.X(f"{x}:Q", scale=xscale, axis=_axis(x)),
        y=alt.Y(f"{y}:Q", scale=alt.Scale(zero=False), axis=_axis(y)),
        color=color, fillOpacity=fill, opacity=protocol_legend,
        shape=alt.Shape("variant:N", legend=alt.Legend(title="model (variant)", orient="right")),
        size=alt.condition("datum.best_protocol", alt.value(150), alt.value(80)),
        tooltip=_tooltip(list(dict.fromkeys(tips))),
    )
    best = alt.Chart().transform_filter("datum.best_protocol").mark_point(
        filled=False, size=320, color="#222222", strokeWidth=1.2, opacity=0.8,
    ).encode(x=f"{x}:Q", y=f"{y}:Q")
    frontier = alt.Chart().transform_filter("datum.on_front").mark_line(
        color="#333333", strokeWidth=1.5, interpolate="step-after",
    ).encode(x=f"{x}:Q", y=f"{y}:Q", detail="base:N", order=f"{x}:Q", strokeDash=alt.value([5, 3]))
    ref_style = {"color": "#999999", "strokeWidth": 1, "strokeDash": [2, 2]}
    full_x = alt.Chart().mark_rule(**ref_style).encode(x="mean(x_full):Q", detail="base:N",
                                                       tooltip=[alt.Tooltip("base:N", title="full cache of")])
    full_y = alt.Chart().mark_rule(**ref_style).encode(y="mean(y_full):Q", detail="base:N",
                                                       tooltip=[alt.Tooltip("base:N", title="full cache of")])
    layers = [full_x, full_y, frontier, points, best]
    if "ci_low" in data.columns:
        errorbars = alt.Chart().mark_rule(strokeWidth=1.5, opacity=0.5).encode(
            x=f"{x}:Q", y="ci_low:Q", y2="ci_high:Q", color=color,
            tooltip=_tooltip(["policy", "budget", "variant", y]) + [
                alt.Tooltip("ci_low:Q", format=".3f", title="95% CI low"),
                alt.Tooltip("ci_high:Q", format=".3f", title="95% CI high"),
                alt.Tooltip("n_examples:Q", format="d", title="examples")],
        )
        layers = [full_x, full_y, frontier, errorbars, points, best]
    # panels by workload, then context length as a number (512 before 1024), then base
    order = data.sort_values(["workload", "context_length", "base"])["panel"].drop_duplicates().tolist()
    return alt.layer(*layers, data=data).properties(width=300, height=230).facet(
        facet=alt.Facet("panel:N", title=None, header=alt.Header(labelFontSize=13, labelFontWeight="bold"),
                        sort=order),
        columns=columns,
    ).resolve_scale(x="independent").properties(
        title=f"{AXIS_TITLES.get(y, y)} vs {AXIS_TITLES.get(x, x)}: a panel per workload setting and base "
              "model, dashed: the base's Pareto front, grey: the full cache",
        usermeta={"embedOptions": {"renderer": "svg"}},
    )


def latency_chart(
    df: pd.DataFrame, y: str = "tpot_ms", *, budget: float | None = None,
    policies: Sequence[str] | None = None, columns: int = 2,
) -> alt.Chart | alt.FacetChart:
    """`y` (TPOT / TTFT in ms, physical KV bytes or kept fraction) against context length, a
    line per policy and variant (marker shape: the variant, e.g. base + adapter). With `budget` set, only
    runs at that budget and runs without one (the full cache) are drawn; a panel per base model when there
    are several (its variants beside its baselines), `columns` panels a row."""
    allowed = ("tpot_ms", "ttft_ms", "kv_bytes_physical", "kept_fraction")
    if y not in allowed:
        raise ValueError(f"latency y={y!r}: use one of {', '.join(allowed)}")
    data = latency_by_context(df)
    if budget is not None:
        data = data[(data["budget"] == budget) | data["budget"].isna()]
    data = data[data[y].notna()]
    color = alt.Color("policy:N", scale=policy_scale(policies or data["policy"].unique().tolist()))
    several_variants = data["model"].nunique() > data["base"].nunique()
    marker = alt.OverlayMarkDef(size=60, filled=True)
    chart = alt.Chart(data).mark_line(point=marker).encode(
        x=alt.X("context_length:Q", axis=_axis("context_length"), scale=alt.Scale(zero=False)),
        y=alt.Y(f"{y}:Q", axis=_axis(y)),
        color=color,
        shape=alt.Shape("model:N", legend=alt.Legend(title="model (variant)")) if several_variants
        else alt.value("circle"),
        detail=["budget_label:N", "model:N", "compress:N"],
        tooltip=_tooltip(["policy", "budget", "base", "model", "compress", "context_length", y, "runs"]),
    ).properties(width=380, height=260, title=AXIS_TITLES.get(y, y))
    if data["base"].nunique() > 1:
        # a panel per base, `columns` a row (wrapping), narrower panels: fits a 1500 px page
        return chart.properties(title="", width=300, height=200).facet(
            facet=alt.Facet("base:N", title=None), columns=columns,
        ).properties(title=f"{AXIS_TITLES.get(y, y)} (a panel per base model)")
    return chart


def overview_chart(overview: pd.DataFrame) -> alt.Chart:
    """A stacked bar per sweep: done / failed / pending run counts."""
    long = overview.melt(id_vars=["sweep"], value_vars=list(STATUS_COLORS),
                         var_name="status", value_name="count")
    order = list(STATUS_COLORS)
    return alt.Chart(long).mark_bar().encode(
        y=alt.Y("sweep:N", title=None, sort=overview["sweep"].tolist()),
        x=alt.X("count:Q", title="runs", stack="zero"),
        color=alt.Color("status:N", scale=alt.Scale(domain=order, range=[STATUS_COLORS[s] for s in order]),
                        legend=alt.Legend(orient="bottom", title=None)),
        order=alt.Order("status_order:Q"),
        tooltip=["sweep:N", "status:N", "count:Q"],
    ).transform_calculate(
        status_order=f"indexof({json.dumps(order)}, datum.status)",
    ).properties(height=alt.Step(28))


def paper_reference_chart(
    ours: pd.DataFrame, published: pd.DataFrame, *, policies: Sequence[str] | None = None,
) -> alt.LayerChart:
    """Kept fraction per policy: published points and ranges (hollow squares joined by a band,
    "published, not measured here") beside the kept fractions measured here (a diamond per
    finished run)."""
    measured = ours[(ours["status"] == DONE) & ours["kept_fraction"].notna()]
    measured = measured[["policy", "kept_fraction", "model", "workload", "budget"]].assign(
        source="measured here")
    names = list(dict.fromkeys([*published["policy"], *measured["policy"]]))
    color = alt.Color("policy:N", scale=policy_scale(policies or names), legend=None)
    y = alt.Y("policy:N", sort=names, title=None)
    offset = alt.YOffset("source:N", scale=alt.Scale(domain=[paper_reference.LABEL, "measured here"]))
    pub_tooltip = ["setting:N", "policy:N", alt.Tooltip("kept_low:Q", format=".1%"),
                   alt.Tooltip("kept_high:Q", format=".1%"), "claim:N", "source:N"]
    pub_range = alt.Chart(published).mark_rule(strokeWidth=7, opacity=0.3).encode(
        x=alt.X("kept_low:Q", scale=alt.Scale(domain=[0, 1]), axis=_axis("kept_fraction")),
        x2="kept_high:Q", y=y, yOffset=offset, color=color, tooltip=pub_tooltip,
    )
    pub_ends = alt.Chart(published).transform_fold(["kept_low", "kept_high"], as_=["end", "kept"]).mark_point(
        shape="square", filled=False, size=130, strokeWidth=2).encode(
        x="kept:Q", y=y, yOffset=offset, color=color, tooltip=pub_tooltip,
    )
    ours_layer = alt.Chart(measured).mark_point(filled=True, size=110, shape="diamond").encode(
        x="kept_fraction:Q", y=y, yOffset=offset, color=color,
        tooltip=_tooltip(["policy", "model", "workload", "budget", "kept_fraction"]) + ["source:N"],
    )
    return alt.layer(pub_range, pub_ends, ours_layer).properties(
        height=alt.Step(17), width=640,  # per source row inside a policy band
        title="kept fraction per policy: hollow squares / bands = published, not measured here (upper); "
              "diamonds = measured here (lower)",
    )
