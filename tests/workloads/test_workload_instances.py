"""Workload instances: determinism, ids and content hashes, lengths, depth, tokenizers."""

import hashlib
import json

import pytest

from services import workloads
from services.workloads.base import Instance, content_hash

SYNTHETIC = ["passkey", "niah_multikey", "kv_recall", "variable_tracking"]
SMALL = {"context_length": 300}


@pytest.mark.parametrize("name", SYNTHETIC)
def test_same_seed_same_instances_and_hashes(name):
    a = workloads.instances(name, SMALL, 4, seed=7)
    b = workloads.instances(name, SMALL, 4, seed=7)
    assert [x.id for x in a] == [x.id for x in b]
    assert [x.content_hash for x in a] == [x.content_hash for x in b]
    assert [(x.prompt, x.answer) for x in a] == [(x.prompt, x.answer) for x in b]
    assert len({x.id for x in a}) == 4 and len({x.content_hash for x in a}) == 4


@pytest.mark.parametrize("name", SYNTHETIC)
def test_different_seed_different_instances(name):
    a = workloads.instances(name, SMALL, 4, seed=0)
    b = workloads.instances(name, SMALL, 4, seed=1)
    assert not {x.content_hash for x in a} & {x.content_hash for x in b}
    assert {x.id for x in a}.isdisjoint({x.id for x in b})


@pytest.mark.parametrize("name", SYNTHETIC)
def test_instance_does_not_depend_on_n(name):
    few = workloads.instances(name, SMALL, 2, seed=3)
    more = workloads.instances(name, SMALL, 5, seed=3)
    assert [x.content_hash for x in few] == [x.content_hash for x in more[:2]]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_prompt_has_context_length_bytes_and_room_for_the_answer(name):
    for ctx in (200, 333):
        for inst in workloads.instances(name, {"context_length": ctx}, 3, seed=0):
            assert len(inst.prompt.encode()) == ctx
            assert inst.meta["prompt_tokens"] == ctx
            assert inst.max_new_tokens > len(inst.answer.encode())
            assert inst.kind == "generate"


def test_content_hash_is_sha256_of_content_and_ignores_id():
    inst = workloads.instances("passkey", SMALL, 1, seed=0)[0]
    payload = {"workload": inst.workload, "prompt": inst.prompt, "answer": inst.answer,
               "max_new_tokens": inst.max_new_tokens, "kind": inst.kind, "meta": inst.meta}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert inst.content_hash == hashlib.sha256(blob.encode()).hexdigest()
    renamed = Instance(id="other", workload=inst.workload, prompt=inst.prompt, answer=inst.answer,
                       max_new_tokens=inst.max_new_tokens, meta=dict(inst.meta))
    assert renamed.content_hash == inst.content_hash
    changed = Instance(id=inst.id, workload=inst.workload, prompt=inst.prompt + " ", answer=inst.answer,
                       max_new_tokens=inst.max_new_tokens, meta=dict(inst.meta))
    assert changed.content_hash != inst.content_hash == content_hash(inst)


def test_passkey_needle_sits_at_the_asked_depth():
    for depth in (0.0, 0.5, 1.0):
        for inst in workloads.instances("passkey", {"context_length": 1024, "depth": depth}, 3, seed=0):
            pos = inst.prompt.index(f"The pass key is {inst.answer}.")
            assert inst.prompt.rstrip().endswith("The pass key is")
            assert abs(pos / len(inst.prompt) - depth) < 0.15, (depth, pos)
            assert inst.meta["depth"] == depth


def test_depth_none_draws_varied_depths():
    depths = [x.meta["depth"] for x in workloads.instances("passkey", SMALL, 8, seed=0)]
    assert all(0.0 <= d <= 1.0 for d in depths) and len(set(depths)) == 8


def test_filler_and_needle_parameters_reach_the_prompt():
    inst = workloads.instances("niah_multikey", {"context_length": 400, "filler": "Foo bar baz. ",
                                                 "num_keys": 6, "digits": 4}, 1, seed=0)[0]
    assert "Foo bar baz." in inst.prompt and "grass" not in inst.prompt
    assert inst.prompt.count("The number for ") == 6 + 1  # six needles + the question
    assert len(inst.answer) == 4 and inst.answer in inst.prompt
    kv = workloads.instances("kv_recall", {"context_length": 400, "num_pairs": 5, "num_queries": 2}, 1, seed=0)[0]
    assert len(kv.meta["queries"]) == 2 and len(kv.answer.split()) == 2


def test_other_tokenizer_fits_context_length_in_its_tokens():
    # a coarse tokenizer: one token per 3 bytes (rounded up); prompts must be measured in it
    def count(text):
        return -(-len(text.encode()) // 3)

    for name in SYNTHETIC:
        for inst in workloads.instances(name, {"context_length": 200}, 3, seed=0, count_tokens=count):
            n = count(inst.prompt)
            assert 190 <= n <= 200, (name, n)
            assert inst.meta["prompt_tokens"] == n


def test_lm_text_is_deterministic_long_enough_and_scored_by_nll():
    a = workloads.instances("lm_text", {"context_length": 128}, 3, seed=0)
    b = workloads.instances("lm_text", {"context_length": 128}, 3, seed=0)
    c = workloads.instances("lm_text", {"context_length": 128}, 3, seed=1)
    assert [x.content_hash for x in a] == [x.content_hash for x in b]
    assert {x.content_hash for x in a}.isdisjoint({x.content_hash for x in c})
    for inst in a:
        assert inst.kind == "nll" and inst.answer == "" and inst.meta["max_tokens"] == 128
        assert len(inst.prompt.encode()) >= 128


def test_lm_text_reads_a_local_text_dir(tmp_path):
    for i in range(40):  # enough files that both the train and the held-out split get some
        (tmp_path / f"book{i:02d}.txt").write_text(f"Chapter {i}. " + "It was a dark and stormy night. " * 20)
    insts = workloads.instances("lm_text", {"context_length": 64, "text_dir": str(tmp_path)}, 2, seed=0)
    assert all(("stormy" in x.prompt) or ("Chapter" in x.prompt) for x in insts)
    small = tmp_path / "small"
    small.mkdir()
    (small / "only.txt").write_text("A single test-set book. " * 10)
    one = workloads.instances("lm_text", {"context_length": 32, "text_dir": str(small), "split": "all"}, 1, seed=0)
    assert "test-set book" in one[0].prompt
    with pytest.raises(ValueError, match="text_dir"):
        workloads.instances("lm_text", {"context_length": 64, "text_dir": str(tmp_path / "missing")}, 1, seed=0)


@pytest.mark.parametrize("name, prefix", [("passkey", "The pass key is "), ("niah_multikey", "The number for "),
                                          ("kv_recall", "Answer: "), ("variable_tracking", "=")])
def test_chat_on_splits_the_prompt_into_user_turn_and_answer_prefix(name, prefix):
    w = workloads.get(name)
    plain = w.instances(SMALL, 3, seed=4)
    chat = w.instances({**SMALL, "chat": "on"}, 3, seed=4)
    for p, c in zip(plain, chat, strict=True):
        parts = c.meta["chat"]
        assert c.prompt == p.prompt
        assert c.prompt in {parts["user"] + sep + parts["assistant_prefix"] for sep in ("", " ", "\n")}
        assert prefix in parts["assistant_prefix"] and "\n" not in parts["assistant_prefix"]
        assert parts["user"].rstrip().endswith(("?", ".")) and "chat" not in p.meta
    # chat="off" (the default) leaves the instances and their hashes as they were
    assert [i.content_hash for i in w.instances({**SMALL, "chat": "off"}, 3, seed=4)] == \
        [i.content_hash for i in plain]
    with pytest.raises(ValueError, match=r"parameter 'chat' must be one of 'off', 'on', got 'yes'"):
        w.instances({**SMALL, "chat": "yes"}, 1, seed=0)
