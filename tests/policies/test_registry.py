"""Registry and parameter validation of the policies."""

import pytest

from nats_model.policies import available, build


def test_available_lists_the_builtin_policies():
    names = available()
    assert {"full", "streaming_llm", "h2o"} <= set(names)
    assert names == sorted(names)


def test_build_returns_configured_policies():
    p = build("h2o", budget=0.25, recent_ratio=0.3)
    assert (p.name, p.budget, p.recent_ratio) == ("h2o", 0.25, 0.3)
    s = build("streaming_llm", budget_tokens=16, n_sink=2, positions="rerotate")
    assert (s.budget_tokens, s.n_sink, s.positions) == (16, 2, "rerotate")


@pytest.mark.parametrize("name, params, needle", [
    ("nope", {}, "unknown policy 'nope'; available: "),
    ("h2o", {"budget": 0.2, "heavy": 3}, "no parameter 'heavy'; allowed: budget, budget_tokens, recent_ratio"),
    ("h2o", {"budget": 0.0}, "budget must be a fraction in (0, 1]"),
    ("h2o", {"budget": 1.5}, "budget must be a fraction in (0, 1]"),
    ("h2o", {"budget_tokens": 0}, "budget_tokens must be an int >= 1"),
    ("h2o", {"budget_tokens": 2.5}, "budget_tokens must be an int >= 1"),
    ("h2o", {"budget": 0.2, "budget_tokens": 8}, "not both"),
    ("h2o", {}, "needs a budget"),
    ("h2o", {"budget": 0.2, "recent_ratio": 1.5}, "recent_ratio must be in [0, 1]"),
    ("full", {"budget": 0.5}, "full: takes no budget"),
    ("streaming_llm", {"budget": 0.2, "positions": "shifted"}, "positions must be one of ('original', 'rerotate')"),
    ("streaming_llm", {"budget": 0.2, "n_sink": -1}, "n_sink must be an int >= 0"),
    ("streaming_llm", {"budget_tokens": 4, "n_sink": 4}, "must exceed n_sink"),
])
def test_bad_parameters_name_the_input_and_allowed_values(name, params, needle):
    with pytest.raises(ValueError) as err:
        build(name, **params)
    assert needle in str(err.value)
    if name == "nope":
        assert "full" in str(err.value) and "h2o" in str(err.value)


def test_new_policies_are_discovered():
    assert {"knorm", "expected_attention", "pyramidkv", "adakv"} <= set(available())


@pytest.mark.parametrize("name", available())
def test_every_policy_declares_its_protocols(name):
    from nats_model.policies import policy_class
    from nats_model.policies.base import PROTOCOLS

    cls = policy_class(name)
    assert cls.protocols and set(cls.protocols) <= set(PROTOCOLS)
    assert cls.default_protocol in cls.protocols
    assert isinstance(cls.decode_evicts, bool)
