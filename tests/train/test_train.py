"""From-scratch training: data, config validation, loss goes down, the CLI, --resume, lambda."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from nats_model.data import tasks
from nats_model.data.text import TextCorpus, corpus_files
from nats_model.train.batches import BatchMaker, task_sequence
from nats_model.train.config import ConfigError, parse_config
from nats_model.train.trainer import lr_at, train
from orchestrator.cli import main as cli_main


def raw_config(**over) -> dict:
    raw = {
        "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1, "window": 8},
        "data": {"text_weight": 0.5, "text_max_bytes": 200_000,
                 "tasks": {"passkey": {"weight": 0.5, "params": {"digits": [2, 3]}}}},
        "stages": [{"seq_len": 96, "steps": 4, "batch_size": 4}, {"seq_len": 128, "steps": 4, "batch_size": 4}],
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "eval": {"interval": 4, "text_batches": 1, "batch_size": 4, "examples_per_task": 4},
        "log_interval": 2,
        "checkpoint_interval": 4,
    }
    raw.update(over)
    return raw


# ---------------------------------------------------------------- task formats and corpus
@pytest.mark.parametrize("name", sorted(tasks.TASKS))
@pytest.mark.parametrize("length", [300, 1024])
def test_task_prompt_length_and_determinism(name, length):
    prompt, answer = tasks.make_example(name, random.Random(7), context_length=length, depth=0.3)
    assert len(prompt.encode("utf-8")) == length
    assert (prompt, answer) == tasks.make_example(name, random.Random(7), context_length=length, depth=0.3)
    others = {tasks.make_example(name, random.Random(s), context_length=length)[1] for s in range(8)}
    assert len(others) > 1  # the seed matters
    if name == "kv_recall":
        values = list(tasks.parse_pairs(answer).values())
    elif name == "niah_drill":  # one value per look-up line
        values = [line.rsplit(" ", 1)[-1] for line in answer.split(tasks.ANSWER_END)]
    else:
        values = [answer]
    assert all(v in prompt for v in values)  # the answer can be read from the prompt


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_sits_at_its_depth(depth):
    prompt, answer = tasks.passkey(random.Random(1), context_length=2000, depth=depth)
    pos = prompt.index(f"The pass key is {answer}.")
    assert abs(pos / len(prompt) - depth) < 0.08
    prompt, answer = tasks.niah_multikey(random.Random(1), context_length=2000, depth=depth, num_keys=3)
    asked = prompt.rsplit("The number for ", 1)[1][0]
    assert abs(prompt.index(f"The number for {asked} is {answer}.") / len(prompt) - depth) < 0.08


def test_task_errors_name_the_bad_parameter():
    with pytest.raises(ValueError, match="context_length"):
        tasks.passkey(random.Random(0), context_length=20)
    with pytest.raises(ValueError, match="depth"):
        tasks.passkey(random.Random(0), depth=1.5)
    with pytest.raises(ValueError, match="unknown task"):
        tasks.make_example("nope", random.Random(0))


def test_corpus_split_is_disjoint_and_deterministic(tmp_path):
    train_files, held = corpus_files("train"), corpus_files("heldout")
    assert train_files and held and not set(train_files) & set(held)
    assert corpus_files("heldout") == held
    for i in range(40):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i} " * 20)
    a, b = corpus_files("train", tmp_path, 0.3), corpus_files("heldout", tmp_path, 0.3)
    assert len(a) + len(b) == 40 and not set(a) & set(b) and b
    corpus = TextCorpus.load("heldout", tmp_path, heldout_fraction=0.3)
    assert corpus.sample(random.Random(0), 50) == corpus.sample(random.Random(0), 50)
    assert len(corpus.sample(random.Random(0), 50)) == 50


def test_task_sequence_weights_mark_the_answer():
    ids, weights, is_answer = task_sequence(random.Random(3), "passkey", {}, 128, 0.5, 0.1, depth=0.5)
    assert len(ids) == 129 and len(weights) == len(is_answer) == 128
    text = bytes(ids).decode()
    answer_targets = bytes(ids[t + 1] for t in range(128) if is_answer[t]).decode()
    assert answer_targets.isdigit() and len(answer_targets) == 5
    assert text.split("The pass key is ")[1][:5] == answer_targets  # the needle's key
    assert set(weights) <= {0.0, 0.1, 1.0} and weights.count(1.0) == 6  # answer + end marker


def test_stage_weights_override_the_mix():
    cfg = parse_config(raw_config(stages=[{"seq_len": 96, "steps": 1, "weights": {"text": 0.0}}]))
    maker = BatchMaker(cfg.data)
    mixed = maker.batch(random.Random(0), 16, 96).kinds
    only_tasks = maker.batch(random.Random(0), 16, 96, weights=cfg.stages[0].weights).kinds
    assert "text" in mixed and set(only_tasks) == {"passkey"}
    with pytest.raises(ConfigError, match=r"stages\[0\].weights"):
        parse_config(raw_config(stages=[{"seq_len": 96, "steps": 1, "weights": {"sudoku": 1.0}}]))


def test_a_zero_weight_task_is_drawn_only_where_a_stage_turns_it_on():
    raw = raw_config(stages=[{"seq_len": 256, "steps": 1},
                             {"seq_len": 256, "steps": 1, "weights": {"text": 0.0, "passkey": 0.0, "niah_drill": 1.0}}])
    raw["data"]["tasks"]["niah_drill"] = {"weight": 0.0, "params": {"num_keys": [2, 3], "num_queries": [2, 4]}}
    cfg = parse_config(raw)
    maker = BatchMaker(cfg.data)
    assert "niah_drill" not in maker.batch(random.Random(0), 64, 256).kinds
    assert set(maker.batch(random.Random(0), 8, 256, weights=cfg.stages[1].weights).kinds) == {"niah_drill"}
    # listing a task with weight 0 leaves the other kinds' draws as they were
    base = BatchMaker(parse_config(raw_config()).data)
    assert base.batch(random.Random(5), 32, 256).kinds == maker.batch(random.Random(5), 32, 256).kinds


def test_niah_drill_supervises_every_look_up():
    prompt, answer = tasks.make_example("niah_drill", random.Random(2), context_length=200, num_keys=3, num_queries=4)
    lines = answer.split(tasks.ANSWER_END)
    assert len(lines) == 4 and len(answer) <= tasks.max_answer_tokens("niah_drill", num_keys=3, num_queries=4)
    first_key = prompt.rsplit("The number for ", 1)[1][0]
    assert prompt.endswith(f"\nThe number for {first_key} is ") and f"for {first_key} is {lines[0]}. " in prompt
    for line in lines[1:]:  # "The number for K is V" with the needle's own value
        assert f"{line}. " in prompt
    ids, weights, is_answer = task_sequence(random.Random(3), "niah_drill", {"num_keys": 3, "num_queries": 4},
                                            256, 0.5, 0.1)
    # the first value is what exact match scores; all 4 look-ups (5 + 3 x 26 tokens) + end marker weigh 1
    assert sum(is_answer) == 5 and weights.count(1.0) == 5 + 3 * 26 + 1


# ---------------------------------------------------------------- config and schedule
def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="stages"):
        parse_config({"model": {}, "data": {}})
    with pytest.raises(ConfigError, match=r"stages\[0\].seq_len"):
        parse_config(raw_config(stages=[{"seq_len": 0, "steps": 1}]))
    with pytest.raises(ConfigError, match="unknown task"):
        parse_config(raw_config(data={"tasks": {"sudoku": {}}}))
    with pytest.raises(ConfigError, match="optim.bogus"):
        parse_config(raw_config(optim={"bogus": 1}))
    with pytest.raises(ConfigError, match="n_kv_head"):
        parse_config(raw_config(model={"n_head": 4, "n_kv_head": 3}))


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


# ---------------------------------------------------------------- training
def test_a_few_dozen_steps_reduce_the_loss(tmp_path):
    cfg = parse_config(raw_config(stages=[{"seq_len": 64, "steps": 30, "batch_size": 8}],
                                  optim={"lr": 1e-2, "warmup_steps": 3},
                                  eval={"interval": 30, "text_batches": 1, "batch_size": 4,
                                        "examples_per_task": 2, "seq_len": 64}))
    result = train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert result.steps == 30
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0  # from ~5.5 (uniform bytes) well down


@pytest.mark.slow
def test_cli_writes_checkpoint_and_json_and_resumes(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw_config()))
    out = tmp_path / "run"
    assert cli_main(["train", str(config), "--out", str(out), "--steps", "4", "--no-progress"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {"steps", "train_loss", "val_loss", "kept_fraction", "seconds"}
    assert last["steps"] == 4 and last["kept_fraction"] == 1.0
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "train_state/optimizer.safetensors"):
        assert (out / name).is_file(), name
    n_rows = len((out / "metrics.jsonl").read_text().splitlines())
    assert cli_main(["train", str(config), "--out", str(out), "--resume", "--no-progress"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["steps"] == 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) > n_rows and [r["step"] for r in rows if "train_loss" in r] == [2, 4, 6, 8]
    assert json.loads((out / "train_state" / "state.json").read_text())["step"] == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw_config(stages=[{"seq_len": -1, "steps": 1}])))
    assert cli_main(["train", str(bad), "--out", str(out)]) == 2
    assert "stages[0].seq_len" in capsys.readouterr().err
    assert cli_main(["train", str(config), "--out", str(tmp_path / "empty"), "--resume"]) == 2


@pytest.mark.slow
def test_larger_lambda_keeps_fewer_tokens(tmp_path):
    kept = []
    for lam in (0.0, 1e-5, 1e-4):  # 0.85 > 0.76 > 0.20 when measured
        raw = raw_config(
            model={"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1, "attention": "nats",
                   "window": 4, "lam": lam, "global_bias": 0.0},
            stages=[{"seq_len": 64, "steps": 25, "batch_size": 4}],
            optim={"lr": 1e-2, "warmup_steps": 1},
            eval={"interval": 25, "text_batches": 2, "batch_size": 4, "examples_per_task": 4, "seq_len": 64},
        )
        torch.manual_seed(0)
        kept.append(train(parse_config(raw), tmp_path / f"lam{lam}", progress=False).kept_fraction)
    assert kept[0] > kept[1] > kept[2], kept


def test_stage_lam_overrides_the_regulariser_per_stage(tmp_path, monkeypatch):
    import nats_model.attention as attention_mod

    seen = []
    real = attention_mod.nats_attention

    def spy(*args, **kwargs):
        seen.append(kwargs["lam"])
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_mod, "nats_attention", spy)
    raw = raw_config(
        model={"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1, "attention": "nats", "window": 4,
               "lam": 1e-4},
        stages=[{"seq_len": 64, "steps": 2, "batch_size": 2, "lam": 0.0}, {"seq_len": 64, "steps": 2, "batch_size": 2}],
        eval={"interval": 4, "text_batches": 1, "batch_size": 2, "examples_per_task": 2, "seq_len": 64},
    )
    train(parse_config(raw), tmp_path / "run", progress=False)
    assert seen == [0.0, 0.0, 1e-4, 1e-4]  # one layer, one training forward per step
    # the checkpoint records the configured lambda, not the last stage's override
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lam"] == 1e-4
    with pytest.raises(ConfigError, match=r"stages\[0\].lam needs model.attention 'nats'"):
        parse_config(raw_config(stages=[{"seq_len": 96, "steps": 1, "lam": 1e-4}]))
    with pytest.raises(ConfigError, match=r"stages\[0\].lam must be a non-negative number"):
        parse_config({**raw, "stages": [{"seq_len": 64, "steps": 1, "lam": -1.0}]})


def test_niah_extra_queries_extend_only_the_answer():
    one = tasks.make_example("niah_multikey", random.Random(4), context_length=400, num_keys=4)
    three = tasks.make_example("niah_multikey", random.Random(4), context_length=400, num_keys=4, num_queries=3)
    assert three[0] == one[0]  # same prompt
    lines = three[1].split(tasks.ANSWER_END)
    assert lines[0] == one[1] and len(lines) == 3
    asked = {line.split("for ")[1][0] for line in lines[1:]}
    assert len(asked) == 2  # distinct further keys, each answered with its own value
    for line in lines[1:]:
        key, value = line.split("for ")[1][0], line.rsplit(" ", 1)[1]
        assert f"The number for {key} is {value}. " in one[0]
    assert len(three[1]) <= tasks.max_answer_tokens("niah_multikey", num_keys=4, num_queries=3)
    # more queries than keys: capped at the keys there are
    capped = tasks.make_example("niah_multikey", random.Random(4), context_length=400, num_keys=2, num_queries=5)
    assert len(capped[1].split(tasks.ANSWER_END)) == 2
    # the teacher-forced answer mask covers the first line (what greedy evaluation scores)
    ids, weights, is_answer = task_sequence(random.Random(3), "niah_multikey", {"num_keys": 3, "num_queries": 3},
                                            512, 0.5, 0.1, depth=0.5)
    assert sum(is_answer) == 5 and weights.count(1.0) > 5 + 2 * 50
