"""Scoring functions: exact match, per-query accuracy, token F1, string match, and each
workload's scorer on its own instances."""

import pytest

from services import workloads
from services.workloads.scoring import (
    best_token_f1,
    exact_match,
    normalize_answer,
    per_query_accuracy,
    string_match_all,
    string_match_part,
    token_f1,
)


@pytest.mark.parametrize("pred, ref, want", [
    ("12345", "12345", 1.0),
    (" 12345\nWhat else", "12345", 1.0),
    ("12345. Remember it", "12345", 1.0),
    ("123456", "12345", 0.0),
    ("1234", "12345", 0.0),
    ("", "12345", 0.0),
    ("\n12345", "12345", 1.0),
    ("x 12345", "12345", 0.0),
])
def test_exact_match(pred, ref, want):
    assert exact_match(pred, ref) == want


def test_exact_match_needs_an_answer():
    with pytest.raises(ValueError):
        exact_match("x", " ")


def test_per_query_accuracy():
    assert per_query_accuracy(["1", "2", "3"], ["1", "2", "3"]) == 1.0
    assert per_query_accuracy(["1", "x", "3"], ["1", "2", "3"]) == pytest.approx(2 / 3)
    assert per_query_accuracy(["1"], ["1", "2"]) == 0.5
    assert per_query_accuracy([None, None], ["1", "2"]) == 0.0


def test_token_f1_and_normalisation():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    # pred {cat, sat}, ref {cat, sat, down}: precision 1, recall 2/3 -> F1 0.8
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("Paris.", "paris") == 1.0
    assert best_token_f1("in paris france", ["london", "paris"]) == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))


def test_string_match():
    assert string_match_all("the values are 12 and 34", ["12", "34", "56"]) == pytest.approx(2 / 3)
    assert string_match_part("the values are 12", ["99", "12"]) == 1.0
    assert string_match_part("nothing", ["99", "12"]) == 0.0
    assert string_match_all("ABC", ["abc"]) == 1.0


@pytest.mark.parametrize("name", ["passkey", "niah_multikey", "variable_tracking"])
def test_exact_match_workloads_score_their_instances(name):
    w = workloads.get(name)
    inst = w.instances({"context_length": 300}, 1, seed=0)[0]
    assert w.score(inst.answer + "\n", inst) == 1.0
    wrong = "0" * len(inst.answer) if inst.answer != "0" * len(inst.answer) else "1" * len(inst.answer)
    assert w.score(wrong + "\n", inst) == 0.0


def test_kv_recall_scores_each_query():
    w = workloads.get("kv_recall")
    inst = w.instances({"context_length": 400, "num_pairs": 6, "num_queries": 3}, 1, seed=0)[0]
    keys, values = inst.meta["queries"], inst.meta["values"]
    assert inst.answer == " ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
    assert w.score(inst.answer + "\nmore", inst) == 1.0
    two_right = f"{keys[0]}={values[0]} {keys[1]}={values[1]} {keys[2]}=x"
    assert w.score(two_right, inst) == pytest.approx(2 / 3)
    # order of the generated pairs does not matter, the key does
    assert w.score(f"{keys[2]}={values[2]} {keys[0]}={values[0]}", inst) == pytest.approx(2 / 3)
    assert w.score("nothing useful", inst) == 0.0
