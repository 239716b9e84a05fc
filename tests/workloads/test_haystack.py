"""haystack=text: the retrieval workloads hide their needles in real English text instead of repeated filler."""

from __future__ import annotations

import pytest

from services import workloads
from services.models import load_model


@pytest.fixture(scope="module")
def count_tokens():
    return load_model("random:tiny-llama").count_tokens


@pytest.mark.parametrize("name", ["passkey", "niah_multikey", "kv_recall", "variable_tracking"])
def test_text_haystack_holds_the_needle_in_real_text(name, count_tokens):
    w = workloads.get(name)
    params = w.validate({"context_length": 384, "haystack": "text"})
    a = w.instances(params, 3, seed=1, count_tokens=count_tokens)
    b = w.instances(params, 3, seed=1, count_tokens=count_tokens)
    assert [i.prompt for i in a] == [i.prompt for i in b]  # a pure function of the seed
    assert len({i.prompt for i in a}) == 3
    for inst in a:
        assert "The grass is green" not in inst.prompt
        assert count_tokens(inst.prompt) <= 384 and count_tokens(inst.prompt) > 300
    plain = w.instances(w.validate({"context_length": 384}), 1, seed=1, count_tokens=count_tokens)[0]
    assert "The grass is green" in plain.prompt
    if name == "passkey":
        assert all(i.answer in i.prompt for i in a)


def test_text_dir_is_the_haystack(tmp_path, count_tokens):
    (tmp_path / "a.txt").write_text("Zebras cross the wide river at dawn. " * 400)
    w = workloads.get("passkey")
    inst = w.instances(w.validate({"context_length": 200, "haystack": "text", "text_dir": str(tmp_path)}), 1, 0,
                       count_tokens=count_tokens)[0]
    assert "Zebras cross the wide river" in inst.prompt and inst.answer in inst.prompt


@pytest.mark.parametrize("bad, message", [
    ({"haystack": "hay"}, "'haystack' must be one of 'repeat', 'text'"),
    ({"text_dir": "/tmp"}, "'text_dir' needs haystack='text'"),
    ({"haystack": "text", "text_dir": "/no/such/folder"}, "is not a folder"),
])
def test_bad_haystack_parameters_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        workloads.get("passkey").validate(bad)
