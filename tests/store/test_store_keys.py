"""run_key: stable, canonical, sensitive to every config value and to CODE_VERSION."""

from __future__ import annotations

import copy
import re

import pytest

from services.store import CONFIG_KEYS, keys, run_key


def test_same_config_same_key_whatever_the_key_order(make_config):
    config = make_config()
    reordered = dict(reversed(list(copy.deepcopy(config).items())))
    reordered["policy_params"] = dict(reversed(list(reordered["policy_params"].items())))
    assert run_key(config) == run_key(reordered)
    assert re.fullmatch(r"[0-9a-f]{64}", run_key(config))  # a sha256 hex digest


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "other"),
        ("seed", 1),
        ("policy_params", {"budget": 0.5, "sink": 4}),
        ("dtype", "bfloat16"),
        ("workload_params", {"context_length": 512}),
        ("n_examples", 9),
    ],
)
def test_any_change_changes_the_key(make_config, field, value):
    assert run_key(make_config()) != run_key(make_config(**{field: value}))


def test_code_version_is_part_of_the_key(make_config, monkeypatch):
    before = run_key(make_config())
    monkeypatch.setattr(keys, "CODE_VERSION", str(int(keys.CODE_VERSION) + 1))
    assert run_key(make_config()) != before


def test_missing_keys_are_named(make_config):
    config = make_config()
    del config["seed"], config["dtype"]
    with pytest.raises(ValueError, match=r"\['seed', 'dtype'\]"):
        run_key(config)
    assert set(CONFIG_KEYS) == set(make_config())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()])
def test_non_canonical_values_are_rejected(make_config, bad):
    with pytest.raises(ValueError, match="policy_params.budget"):
        run_key(make_config(policy_params={"budget": bad}))
