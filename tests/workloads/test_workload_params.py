"""Workload parameter validation: defaults, coercion and errors that name the bad input."""

import pytest

from services import workloads


def test_registry_lists_every_workload_with_defaults():
    names = workloads.available()
    assert names == ["passkey", "niah_multikey", "kv_recall", "variable_tracking", "lm_text", "local_dataset"]
    listing = {w["name"]: w for w in workloads.describe()}
    params = {p["name"]: p for p in listing["passkey"]["params"]}
    assert params["context_length"]["default"] == 1024 and params["depth"]["default"] is None
    assert {"context_length", "depth", "filler"} <= set(params)
    assert {p["name"] for p in listing["niah_multikey"]["params"]} >= {"num_keys", "context_length"}


def test_unknown_workload_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown workload 'nope'.*passkey.*local_dataset"):
        workloads.get("nope")


def test_unknown_parameter_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'passkey' has no parameter 'lenght'.*context_length.*depth"):
        workloads.get("passkey").validate({"lenght": 10})


@pytest.mark.parametrize("name, params, needle", [
    ("passkey", {"context_length": "abc"}, r"'context_length' must be an integer in \[16, 1000000\]"),
    ("passkey", {"context_length": 8}, r"'context_length' must be an integer"),
    ("passkey", {"context_length": True}, r"'context_length'"),
    ("passkey", {"depth": 1.5}, r"'depth' must be a number in \[0, 1\] or null, got 1.5"),
    ("passkey", {"filler": 3}, r"'filler' must be a string"),
    ("niah_multikey", {"num_keys": 27}, r"'num_keys' must be an integer in \[1, 26\]"),
    ("kv_recall", {"num_pairs": 2, "num_queries": 3}, r"'num_queries' must be <= num_pairs=2"),
    ("variable_tracking", {"num_hops": 10, "num_chains": 3}, r"variable_tracking.*num_chains\*\(num_hops\+1\)"),
    ("local_dataset", {}, r"needs parameter 'path'"),
    ("local_dataset", {"path": "x.parquet", "metric": "bleu"}, r"'metric' must be one of 'auto'"),
])
def test_bad_values_name_the_parameter_and_allowed_values(name, params, needle):
    with pytest.raises(ValueError, match=needle):
        workloads.get(name).validate(params)


def test_values_are_coerced_and_defaults_filled():
    p = workloads.get("passkey").validate({"context_length": 512.0, "depth": "0.25"})
    assert p["context_length"] == 512 and isinstance(p["context_length"], int)
    assert p["depth"] == 0.25 and p["digits"] == 5 and "grass" in p["filler"]


def test_context_too_small_for_the_task_names_context_length():
    with pytest.raises(ValueError, match="context_length"):
        workloads.instances("kv_recall", {"context_length": 40}, 1, seed=0)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_bad_number_of_examples(n):
    with pytest.raises(ValueError, match="n_examples"):
        workloads.instances("passkey", {"context_length": 200}, n, seed=0)
