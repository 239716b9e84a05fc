"""The base model as the comparison unit (services/model_base.py) and the workload settings and
protocols the Pareto view compares on, as plain data on records shaped like `make demo`'s."""

import json

import pytest
from fixture_runs import DEMO_NATS_DOMINATES, demo_records

from dashboard import charts, data
from services.declaration import default_protocol
from services.model_base import SCRATCH, base_model


@pytest.fixture(scope="module")
def demo():
    return data.records_frame(demo_records())


def _gpt_folder(path, **files):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "natsbench-gpt"}))
    for name, text in files.items():
        (path / name.replace("__", ".")).write_text(text if isinstance(text, str) else json.dumps(text))
    return path


def test_base_model_follows_the_folders_records(tmp_path):
    base = _gpt_folder(tmp_path / "base-a", MODEL_CARD__md="# base-a\n\nTrained from scratch.\n")
    ft = _gpt_folder(tmp_path / "ft-a", finetune_config__json={"base": str(base), "nats": {}})
    ft2 = _gpt_folder(tmp_path / "ft-of-ft", finetune_config__json={"base": str(ft)})
    conv = _gpt_folder(tmp_path / "llama-a", MODEL_CARD__md=(
        "converted by `python -m nats_model.models.gpt_to_llama " f"{base} {tmp_path / 'llama-a'}`.\n"))
    real = _gpt_folder(tmp_path / "real-a", natsbench_import__json={"source": "gguf"})
    carded = _gpt_folder(tmp_path / "real-b", MODEL_CARD__md="# b\n\nsource: gguf\n")
    assert base_model(str(base)) == {"base": "base-a", "variant": "base-a", "origin": SCRATCH, "is_base": True,
                                     "real": False, "chain": ["base-a"]}
    assert base_model(str(ft))["base"] == "base-a" and base_model(str(ft))["origin"] == "fine-tuned from base-a"
    assert base_model(str(ft2))["chain"] == ["ft-of-ft", "ft-a", "base-a"]
    assert base_model(str(conv))["base"] == "base-a" and base_model(str(conv))["origin"].startswith("converted")
    with_adapter = base_model(str(conv), adapter=str(tmp_path / "my-adapter"))
    assert with_adapter["variant"] == "llama-a + my-adapter" and with_adapter["base"] == "base-a"
    assert not with_adapter["is_base"] and with_adapter["origin"] == "NAtS adapter on llama-a"
    for folder in (real, carded):
        got = base_model(str(folder), adapter="x/real-nats")
        assert got["real"] and got["base"] == folder.name and got["variant"] == f"{folder.name} + real-nats"
    assert base_model("random:tiny-gpt")["base"] == "random:tiny-gpt"
    assert base_model(str(tmp_path / "gone"))["base"] == "gone"  # no folder: its own base


def test_shipped_models_bases():
    """The repository's models: both NAtS variants of the demo compare against tiny-base."""
    assert base_model("tiny-nats-ft")["base"] == "tiny-base"
    assert base_model("tiny-llama-base", "models/tiny-llama-nats")["base"] == "tiny-base"
    assert base_model("tiny-nats-scratch")["base"] == "tiny-nats-scratch"
    assert base_model("tiny-base")["is_base"]


def test_default_protocol_matches_the_policies():
    for policy in ("full", "nats", "streaming_llm", "h2o", "snapkv", "tova"):
        assert data.protocol_of(policy, None) == default_protocol(policy)
    assert data.protocol_of("snapkv", "context") == "context"


def test_records_derive_or_read_the_base(demo):
    by_variant = demo.drop_duplicates("variant").set_index("variant")
    assert by_variant.loc["tiny-nats-ft", "base"] == "tiny-base"  # no recorded base: derived
    assert by_variant.loc["tiny-llama-base + tiny-llama-nats", "base"] == "tiny-base"  # recorded
    # a recorded base wins over the folders (a store read where the models differ)
    rec = demo_records()[0]
    rec["extras"] = {"model_info": {"base_model": {"base": "elsewhere", "origin": "x", "real": True}}}
    row = data.records_frame([rec]).iloc[0]
    assert (row["base"], row["real"]) == ("elsewhere", True)
    assert set(demo["compress"]) == {"streaming", "prompt", "context"}
    assert set(demo[demo["policy"] == "snapkv"]["compress"]) == {"prompt", "context"}


def test_a_setting_is_one_workload_and_context_length(demo):
    points = data.pareto_points(demo, "kv_bytes_physical", "accuracy")
    for setting, part in points.groupby("setting"):
        assert part["context_length"].nunique() == 1 and part["workload"].nunique() == 1, setting
    assert set(points[points["workload"] == "niah_multikey"]["setting_params"]) == {"num_keys=2"}


@pytest.mark.parametrize("x", ["kv_bytes_physical", "full_cache_fraction"])
def test_nats_of_each_variant_is_on_its_bases_front(demo, x):
    points = data.pareto_points(demo, x, "accuracy")
    nats = points[points["policy"] == "nats"]
    assert set(nats["base"]) == {"tiny-base"} and nats["variant"].nunique() == 2
    for _, run in nats.iterrows():
        rivals = points[(points["setting"] == run["setting"]) & (points["base"] == run["base"])]
        dominated = ((rivals[x] <= run[x]) & (rivals["accuracy"] >= run["accuracy"])
                     & ((rivals[x] < run[x]) | (rivals["accuracy"] > run["accuracy"]))).any()
        assert run["on_front"] == (not dominated)
        assert run["on_front"] == (run["setting"] in DEMO_NATS_DOMINATES), (run["setting"], run["variant"])


def test_best_protocol_per_policy(demo):
    points = data.pareto_points(demo, "kv_bytes_physical", "accuracy")
    best = points[points["best_protocol"]]
    assert set(best["policy"]) == {"snapkv"}  # the only policy run under two protocols
    for setting, part in points[points["policy"] == "snapkv"].groupby("setting"):
        means = part.groupby("compress")["accuracy"].mean()
        assert set(best[best["setting"] == setting]["compress"]) == {means.idxmax()}


def test_full_cache_fraction_axis_and_reference(demo):
    spec = charts.pareto_chart(demo, "full_cache_fraction", "accuracy").to_dict()
    (rows,) = spec["datasets"].values()
    assert all(r["x_full"] == 1.0 for r in rows)
    for r in rows:
        assert r["full_cache_fraction"] == pytest.approx(r["kv_bytes_physical"] / r["kv_bytes_full"])
    with pytest.raises(ValueError, match="full_cache_fraction"):
        charts.pareto_chart(demo, "tpot_s", "accuracy")


def test_leaderboard_ranks_the_variants_of_a_base(demo):
    lb = data.leaderboard(demo, workload="niah_multikey", base="tiny-base")
    assert {"tiny-base", "tiny-nats-ft", "tiny-llama-base + tiny-llama-nats"} == set(lb["variant"])
    assert lb.iloc[0]["policy"] in ("full", "nats") and lb["accuracy"].is_monotonic_decreasing
    assert len(lb[(lb["policy"] == "snapkv") & (lb["budget"] == 0.25)]) == 2  # one row per protocol
