"""Chart specs as data: Streamlit's AppTest sees charts only as UnknownElement."""

import pytest
from fixture_runs import fixture_records

from dashboard import charts, data, paper_reference


@pytest.fixture(scope="module")
def df():
    return data.records_frame(fixture_records())


def _dataset(spec: dict) -> list[dict]:
    (rows,) = spec["datasets"].values()
    return rows


def _layers(spec: dict) -> list[dict]:
    return spec["spec"]["layer"] if "spec" in spec else spec["layer"]


def test_pareto_chart_spec(df):
    spec = charts.pareto_chart(df, "kv_bytes_physical", "accuracy").to_dict()
    assert spec["facet"]["field"] == "panel"  # a panel per workload + context length (one base here)
    assert spec["resolve"]["scale"]["x"] == "independent"  # each panel its own bytes axis
    assert spec["usermeta"]["embedOptions"]["renderer"] == "svg"
    rows = _dataset(spec)
    assert {r["setting"] for r in rows} == {"passkey @256", "passkey @512", "passkey @1024", "kv_recall @512"}
    # only finished runs with accuracy: lm_text (perplexity) and the failed / pending runs are out
    assert {r["workload"] for r in rows} == {"passkey", "kv_recall"}
    assert len(rows) == int(((df["status"] == "done") & df["accuracy"].notna()).sum())
    full_x, full_y, frontier, errorbars, points, best = _layers(spec)
    assert frontier["mark"]["type"] == "line" and frontier["transform"] == [{"filter": "datum.on_front"}]
    assert frontier["encoding"]["detail"]["field"] == "base"  # a front per base model
    assert (full_x["encoding"]["x"]["field"], full_y["encoding"]["y"]["field"]) == ("x_full", "y_full")
    assert best["transform"] == [{"filter": "datum.best_protocol"}]
    assert points["encoding"]["shape"]["field"] == "variant"
    assert points["encoding"]["fillOpacity"]["field"] == "compress"
    assert {r["panel"] for r in rows} == {r["setting"] for r in rows}
    for r in rows:  # the full cache's reference: its bytes in the same setting, its accuracy
        full = [f["accuracy"] for f in rows if f["setting"] == r["setting"] and f["policy"] == "full"]
        assert r["x_full"] == pytest.approx(r["kv_bytes_full"]) and r["y_full"] == pytest.approx(sum(full) / len(full))
    # an error bar per run: the Wilson 95% interval of its accuracy on its examples
    assert errorbars["mark"]["type"] == "rule"
    assert (errorbars["encoding"]["y"]["field"], errorbars["encoding"]["y2"]["field"]) == ("ci_low", "ci_high")
    for r in rows:
        lo, hi = data.wilson_interval(r["accuracy"], r["n_examples"])
        assert r["ci_low"] == pytest.approx(lo) and r["ci_high"] == pytest.approx(hi)
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    assert points["encoding"]["color"]["field"] == "policy"
    tips = {t["field"] for t in points["encoding"]["tooltip"]}
    assert {"policy", "budget", "variant", "base", "compress", "setting", "setting_params", "context_length",
            "run_key", "accuracy", "kv_bytes_physical"} <= tips
    # the frontier flags agree with the tested frontier function
    flagged = {(r["setting"], r["policy"], r["budget"], r["kv_bytes_physical"]) for r in rows if r["on_front"]}
    done = df[(df["status"] == "done") & df["accuracy"].notna()]
    front = data.pareto_frontier(done, "kv_bytes_physical", "accuracy", by=["setting", "base"])
    expected = {(w, p, None if b != b else b, k) for w, p, b, k in
                front[["setting", "policy", "budget", "kv_bytes_physical"]].itertuples(index=False)}
    assert flagged == expected
    assert points["encoding"]["x"]["scale"]["type"] == "log"  # bytes span > 20x


def test_pareto_protocol_legend_and_a_panel_per_base():
    """The protocol legend: Vega-Lite draws none for fillOpacity, so the opacity channel carries it (the
    same field, every protocol at the points' 0.9) with each entry filled at its protocol's PROTOCOL_FILL.
    A setting two bases ran gets a panel per base (the demo: passkey @1024 on tiny-base and SmolLM2)."""
    from fixture_runs import _demo_record, demo_records

    smol = [_demo_record("smollm2-135m-instruct", None, p, b, "passkey", 1024, k, a)
            for p, b, k, a in (("full", None, 1.0, 1.0), ("tova", 0.25, 0.25, 1.0))]
    smol.append(_demo_record("models/smollm2-135m-instruct", "models/smollm2-135m-nats", "nats", None,
                             "passkey", 1024, 0.03, 1.0))
    frame = data.records_frame(demo_records() + smol)
    spec = charts.pareto_chart(frame).to_dict()
    points = _layers(spec)[4]
    assert points["encoding"]["fillOpacity"]["legend"] is None
    legend = points["encoding"]["opacity"]
    assert legend["field"] == "compress" and legend["legend"]["title"] == "protocol"
    assert legend["scale"] == {"type": "ordinal", "domain": ["streaming", "prompt", "context"], "range": [0.9, 0.9, 0.9]}
    assert points["encoding"]["fillOpacity"]["scale"] == {
        "type": "ordinal", "domain": ["streaming", "prompt", "context"], "range": [0.9, 0.35, 0.0]}
    fill = legend["legend"]["symbolFillColor"]["expr"]
    for protocol, opacity in charts.PROTOCOL_FILL.items():
        assert f'datum.value === "{protocol}"' in fill or protocol == "context"
        assert f"rgba({charts.PROTOCOL_LEGEND_RGB}, {opacity})" in fill
    rows = _dataset(spec)
    panels = {r["panel"] for r in rows}
    assert panels == {"niah_multikey @512", "niah_multikey @1024", "passkey @512",
                      "passkey @1024 · tiny-base", "passkey @1024 · smollm2-135m-instruct"}
    for panel in panels:
        assert len({(r["base"], r["context_length"]) for r in rows if r["panel"] == panel}) == 1
    nats = [r for r in rows if r["base"] == "smollm2-135m-instruct" and r["policy"] == "nats"]
    assert [r["variant"] for r in nats] == ["smollm2-135m-instruct + smollm2-135m-nats"] and nats[0]["on_front"]
    assert spec["facet"]["sort"] == ["niah_multikey @512", "niah_multikey @1024", "passkey @512",
                                     "passkey @1024 · smollm2-135m-instruct", "passkey @1024 · tiny-base"]


def test_pareto_chart_perplexity_and_kept_fraction(df):
    spec = charts.pareto_chart(df, "kept_fraction", "perplexity").to_dict()
    rows = _dataset(spec)
    assert {r["workload"] for r in rows} == {"lm_text"}
    layers = _layers(spec)
    assert len(layers) == 5 and "ci_low" not in rows[0]  # no interval for perplexity
    assert layers[3]["encoding"]["x"]["field"] == "kept_fraction"
    with pytest.raises(ValueError, match="kv_bytes_physical"):
        charts.pareto_chart(df, "tpot_s", "accuracy")


def test_policy_colours_are_stable():
    a = charts.policy_scale(["h2o", "nats", "full"]).to_dict()
    b = charts.policy_scale(["full", "h2o", "nats", "h2o"]).to_dict()
    assert a == b and a["domain"][0] == "nats" and len(set(a["range"])) == 3


def test_latency_chart_filters_budget(df):
    spec = charts.latency_chart(df, "tpot_ms", budget=0.25).to_dict()
    rows = _dataset(spec)
    assert {r["budget"] for r in rows} == {0.25, None}  # the asked budget plus the full cache
    assert {r["policy"] for r in rows} == {"full", "nats", "streaming_llm", "h2o", "snapkv", "tova"}
    assert spec["encoding"]["x"]["field"] == "context_length" and spec["encoding"]["y"]["field"] == "tpot_ms"
    with pytest.raises(ValueError, match="tpot_ms"):
        charts.latency_chart(df, "accuracy")


def test_latency_chart_wraps_model_panels(df):
    from fixture_runs import other_model_records

    four = data.records_frame([*fixture_records(), *other_model_records()])
    spec = charts.latency_chart(four, "tpot_ms", budget=0.25).to_dict()
    # a panel per base model, wrapped two a row (not one column per model side by side): tiny-nats-ft is
    # drawn in tiny-base's panel (fine-tuned from it), marked by its shape
    assert spec["facet"]["field"] == "base" and spec["columns"] == 2
    rows = _dataset(spec)
    assert spec["spec"]["width"] == 300 and len({r["model"] for r in rows}) == 4
    assert {r["base"] for r in rows} == {"gpt-tiny-nats", "tiny-base", "tiny-nats-scratch"}
    assert {r["base"] for r in rows if r["model"] == "tiny-nats-ft"} == {"tiny-base"}
    assert spec["spec"]["encoding"]["shape"]["field"] == "model"


def test_overview_chart_counts(df):
    table = data.sweep_overview(df)
    rows = _dataset(charts.overview_chart(table).to_dict())
    by = {(r["sweep"], r["status"]): r["count"] for r in rows}
    assert by[("tiny-main", "done")] == 80 and by[("tiny-main", "failed")] == 1
    assert by[("tiny-running", "pending")] == 2


def test_paper_reference_chart_keeps_sources_apart(df):
    published = paper_reference.published_kept_fractions()
    spec = charts.paper_reference_chart(df, published).to_dict()
    sources = set()
    for layer in spec["layer"]:
        sources |= {r["source"] for r in spec["datasets"][layer["data"]["name"]]}
        assert layer["encoding"]["yOffset"]["field"] == "source"
    assert sources == {paper_reference.LABEL, "measured here"}


def test_paper_reference_numbers_are_the_method_pages():
    pub = paper_reference.published_kept_fractions()
    assert (pub["source"] == "published, not measured here").all()
    nats = pub[pub["policy"] == "nats"]
    assert sorted(zip(nats["kept_low"], nats["kept_high"], strict=True)) == [(0.03, 0.03), (0.15, 0.25)]
    assert set(pub[pub["policy"] == "h2o"]["kept_low"]) == {0.125, 0.25, 0.5}
    eff = paper_reference.published_efficiency()
    assert "200k -> 700k tokens" in set(eff["published"])
    assert "summaries of the NAtS paper" in paper_reference.SOURCE_NOTE


def test_published_names_align_with_ours():
    pub = paper_reference.published_kept_fractions()
    aligned = paper_reference.align_policy_names(pub, ["StreamingLLM", "NAtS", "tova"])
    assert set(aligned["policy"]) == {"StreamingLLM", "NAtS", "h2o", "snapkv", "full"}
    assert (aligned["kept_low"] == pub["kept_low"]).all()
