"""`natsbench finetune --model DIR` for Hugging Face models (nats_model.train.hf_finetune): the loss falls,
lambda sets the kept fraction, the adapter folder, resume, local data files and the refusals."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch
import yaml
from scorer_testlib import FAMILIES, KV_HEADS, LAYERS, byte_tokenizer, save_tiny_model, tiny_model

from nats_model import adapter as A
from nats_model.data.hf_batches import TokenizedBatchMaker, read_local_rows
from nats_model.train.config import ConfigError
from nats_model.train.finetune_config import NatsSettings, parse_finetune_config
from nats_model.train.hf_finetune import finetune_hf
from orchestrator.cli import main as cli_main


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NATSBENCH_CACHE_DIR", str(tmp_path / "cache"))


def raw_config(**over) -> dict:
    raw = {"nats": {"window": 8, "lam": 0.0, "init_logits": [-2.0, -1.0, 1.0]}, "loss": "hidden_mse",
           "data": {"text_weight": 0.0, "tasks": {"passkey": {"weight": 1.0}}},
           "stages": [{"seq_len": 128, "steps": 30, "batch_size": 2}], "optim": {"lr": 2e-2},
           "log_interval": 1, "threads": 1}
    raw.update(over)
    return raw


def run(tmp_path, kind="llama", **over) -> list[dict]:
    cfg = parse_finetune_config(raw_config(**over))
    out = tmp_path / f"out-{kind}"
    finetune_hf(cfg, None, out, progress=False, model=tiny_model(kind), tokenizer=byte_tokenizer())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r]  # training records (validation records have no loss)


def mean(values) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("kind", FAMILIES)
def test_distillation_loss_falls_over_30_steps(tmp_path, kind):
    """Scorers that start mostly Sliding-window (W = 8) lose the passkey context; the distillation
    gradient teaches them to keep it: the hidden-state MSE on the answer falls."""
    records = run(tmp_path, kind)
    assert len(records) == 30
    losses = [r["loss"] for r in records]
    assert mean(losses[-5:]) < 0.6 * mean(losses[:5]), losses


def test_larger_lambda_keeps_a_smaller_fraction(tmp_path):
    kept = {}
    for lam in (0.0, 1e-2):
        records = run(tmp_path / str(lam), nats={"window": 8, "lam": lam, "init_logits": [-2.0, -1.0, 1.0]})
        kept[lam] = mean([r["kept_fraction"] for r in records[-5:]])
    assert kept[1e-2] < 0.5 * kept[0.0], kept


def _sha(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_cli_writes_an_adapter_folder_and_resumes(tmp_path, capsys):
    base = save_tiny_model(tmp_path / "tiny-llama", "llama")
    base_files = _sha(base)
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(raw_config(nats={"window": 16, "lam": 1e-4, "chunk_size": 4, "global_bias": 0.2},
                                              gradient_checkpointing=True, log_interval=2)))
    out = tmp_path / "adapter"
    args = ["finetune", str(path), "--model", str(base), "--out", str(out), "--no-progress"]
    assert cli_main([*args, "--steps", "4"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {"steps", "loss", "kept_fraction", "seconds"} and last["steps"] == 4
    assert 0 < last["kept_fraction"] <= 1
    cfg, weights = A.load_adapter(out, base)  # checked against the base folder (facts and weight hash)
    assert (cfg.window, cfg.chunk_size, cfg.global_bias, cfg.lam, cfg.steps) == (16, 4, 0.2, 1e-4, 4)
    assert cfg.base_sha256 == A.base_weights_sha256(base) and cfg.source == "natsbench-finetune"
    assert sorted(weights) == list(range(LAYERS)) and weights[0].shape == (KV_HEADS * 3, 64)
    from safetensors.torch import load_file

    assert sorted(load_file(str(out / A.WEIGHTS_FILE))) == [f"layers.{i}.nats_scorer.weight" for i in range(LAYERS)]
    assert _sha(base) == base_files  # the base folder is untouched
    # the adapter drives the nats policy on the base model (W and C from the adapter)
    from transformers import AutoModelForCausalLM

    from nats_model.engine.generation import generate
    from nats_model.models.hf_nats import attach_nats_scorers
    from nats_model.policies import build

    model = AutoModelForCausalLM.from_pretrained(base).eval()
    attach_nats_scorers(model, window=cfg.window, chunk_size=cfg.chunk_size, global_bias=cfg.global_bias,
                        weights=weights)
    res = generate(model, torch.randint(0, 256, (1, 40)), build("nats"), 3)
    assert res.tokens.shape == (1, 3) and 0 < res.kept_fraction <= 1
    # --resume continues from the saved step, appending to the metrics
    assert cli_main([*args, "--steps", "6", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 6
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "passkey_accuracy" in r] == [4, 6]  # validation at each run's end
    assert json.loads((out / A.CONFIG_FILE).read_text())["steps"] == 6
    # the GPT path is unchanged: no --model and no base is refused with one line
    del_base = tmp_path / "nobase.yaml"
    del_base.write_text(yaml.safe_dump(raw_config()))
    assert cli_main(["finetune", str(del_base), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "no base model" in capsys.readouterr().err


def test_cli_refuses_unsupported_and_non_hf_folders(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=259)).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(raw_config()))
    base = ["finetune", str(path), "--out", str(tmp_path / "o"), "--no-progress", "--model"]
    assert cli_main([*base, str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("natsbench finetune: ") and "supported: llama, mistral, qwen2, qwen3" in err[-1]
    assert cli_main([*base, str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert cli_main([*base, str(folder), "--device", "tpu"]) == 2
    assert "--device must be cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli_main([*base, str(folder), "--device", "cuda"]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err


def test_window_and_lambda_default_per_model_family():
    cfg = parse_finetune_config({"data": {"text_weight": 0.0, "tasks": {"passkey": {}}},
                                 "stages": [{"seq_len": 128, "steps": 1}]})
    assert cfg.base is None and cfg.nats.window is None
    hf, gpt = cfg.nats.with_defaults("hf"), cfg.nats.with_defaults("gpt")
    assert (hf.window, hf.lam, hf.chunk_size) == (256, 3e-7, None)  # the paper's fine-tuning recipe
    assert (gpt.window, gpt.lam) == (64, 1e-6)
    assert NatsSettings(window=32, lam=0.0).with_defaults("hf").window == 32
    with pytest.raises(ConfigError, match=r"local_data\[0\].path must be a .jsonl or .parquet"):
        parse_finetune_config(raw_config(local_data=[{"path": "rows.csv"}]))
    with pytest.raises(ConfigError, match=r"local_data\[0\].weight"):
        parse_finetune_config(raw_config(local_data=[{"path": "rows.jsonl", "weight": -1}]))
    with pytest.raises(ConfigError, match="gradient_checkpointing must be true or false"):
        parse_finetune_config(raw_config(gradient_checkpointing="yes"))
    with pytest.raises(ConfigError, match="nats.chunk_size"):
        parse_finetune_config(raw_config(nats={"chunk_size": 0}))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_files_in_kvpress_and_longbench_columns(tmp_path):
    kvpress = _write_jsonl(tmp_path / "kv.jsonl", [
        {"context": "The code word is PLUM. " + "Filler text. " * 40, "question": "What is the code word?",
         "answer_prefix": " Answer:", "answer": ["PLUM"]}])
    longbench = _write_jsonl(tmp_path / "lb.jsonl", [
        {"context": "Alice met Bob in Paris. " * 3, "input": "Where did they meet?", "answers": ["Paris"]}])
    assert read_local_rows(longbench)[0][1:] == ("\n\nWhere did they meet?\nAnswer: ", "Paris")
    pd = pytest.importorskip("pandas")
    pd.DataFrame([{"context": "c", "input": "q?", "answers": ["A", "B"]}]).to_parquet(tmp_path / "lb.parquet")
    assert read_local_rows(tmp_path / "lb.parquet") == [("c", "\n\nq?\nAnswer: ", "A")]  # list column: first answer
    cfg = parse_finetune_config(raw_config(data={"text_weight": 0.0, "tasks": {}},
                                           local_data=[{"path": str(kvpress)}, {"path": str(longbench)}]))
    tok = byte_tokenizer()
    maker = TokenizedBatchMaker(cfg.data, tok, [(d.path, d.weight) for d in cfg.local_data])
    assert maker.kinds == ["local:kv.jsonl", "local:lb.jsonl"]
    batch = maker.batch(random.Random(0), 2, 200, kinds=["local:kv.jsonl", "local:lb.jsonl"])
    for row, answer in ((0, "PLUM"), (1, "Paris")):
        assert tok.decode(batch.targets[row][batch.answer_mask[row]].tolist()) == answer
    kv_text = tok.decode(batch.inputs[0].tolist())  # 600 bytes of context cut in the middle to fit 200 tokens
    assert kv_text.startswith("The code word is PLUM.") and "What is the code word? Answer:PLUM" in kv_text
    assert (batch.weights[1] == 0).any()  # the short LongBench row is right-padded with ignored targets
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    with pytest.raises(ValueError, match="has columns \\['text'\\]; expected kvpress"):
        read_local_rows(bad)
    # a run on local data only trains and writes the adapter
    out = tmp_path / "out"
    run_cfg = parse_finetune_config(raw_config(data={"text_weight": 0.0, "tasks": {}}, local_data=[{"path": str(kvpress)}],
                                               stages=[{"seq_len": 160, "steps": 2, "batch_size": 1}]))
    res = finetune_hf(run_cfg, None, out, progress=False, model=tiny_model("mistral"), tokenizer=tok)
    assert res.steps == 2 and (out / A.WEIGHTS_FILE).is_file()


def test_validation_answers_through_the_engine_with_the_nats_policy():
    """The validator's greedy answers go through the KV engine: with Global-only scorers `nats` is
    `full`, so answers set to what `full` generates score (and one that differs does not) at kept 1."""
    from nats_model.data.tasks import ANSWER_END
    from nats_model.engine.generation import generate
    from nats_model.models.hf_nats import attach_nats_scorers
    from nats_model.policies import build
    from nats_model.train.hf_finetune import HFValidator

    cfg = parse_finetune_config(raw_config(eval={"examples_per_task": 3, "batch_size": 2, "seq_len": 128}))
    tok = byte_tokenizer()
    maker = TokenizedBatchMaker(cfg.data, tok)
    validator = HFValidator(cfg, maker, tok)
    assert [len(v) for v in validator.examples.values()] == [3]
    model = tiny_model("qwen2")
    with torch.no_grad():  # the random model writes lower-case letters only (clean text to compare)
        letters = torch.zeros(model.lm_head.weight.shape[0], dtype=torch.bool)
        letters[ord("a"):ord("z") + 1] = True
        model.lm_head.weight[~letters] = 0.0
        model.lm_head.weight[letters] *= 50.0
    examples = []
    for p_ids, _ in validator.examples["passkey"]:
        assert len(p_ids) <= 128
        got = generate(model, torch.tensor([p_ids]), build("full"), 4).tokens[0].tolist()
        examples.append((p_ids, tok.decode(got)[:3] + ANSWER_END))
    examples[1] = (examples[1][0], "0000" + ANSWER_END)  # digits: never written by this model
    validator.examples["passkey"] = examples
    scorers = attach_nats_scorers(model, window=4)
    with torch.no_grad():
        for proj in scorers.proj.values():
            proj.weight.zero_()  # logits 0 + Global bias 0.1: every token Global
    assert validator.run(model) == {"passkey_accuracy": 2 / 3, "kept_fraction": 1.0}
    with torch.no_grad():
        for proj in scorers.proj.values():
            proj.weight.normal_(0, 5.0)
    assert validator.run(model)["kept_fraction"] < 0.9


@pytest.mark.parametrize("loss", ["logits_kl", "both"])
def test_answer_logit_kl_losses_train_the_scorers(tmp_path, loss):
    model = tiny_model("llama")
    before = model.model.layers[0].self_attn.q_proj.weight.clone()
    cfg = parse_finetune_config(raw_config(loss=loss, stages=[{"seq_len": 96, "steps": 3, "batch_size": 2}]))
    res = finetune_hf(cfg, None, tmp_path / "o", progress=False, model=model, tokenizer=byte_tokenizer())
    assert res.steps == 3 and res.loss > 0 and torch.isfinite(torch.tensor(res.loss))
    _, weights = A.load_adapter(tmp_path / "o", model)
    assert all(w.abs().sum() > 0 for w in weights.values())
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)
    assert model.config._attn_implementation == "sdpa" and not hasattr(model.config, "nats_window")  # detached


def test_a_second_stage_starts_from_an_adapter(tmp_path):
    """`nats.init_adapter`: a run starts from the scorer weights of an earlier run's adapter (checked against the
    base); a different window or both initialisations given are refused."""
    model = tiny_model("llama")
    first = tmp_path / "first"
    finetune_hf(parse_finetune_config(raw_config()), None, first, max_steps=5, progress=False, model=model,
                tokenizer=byte_tokenizer())
    _, trained = A.load_adapter(first)
    nats = {"window": 8, "lam": 0.0, "init_adapter": str(first)}
    second = tmp_path / "second"
    cfg = parse_finetune_config(raw_config(nats=nats, optim={"lr": 1e-12}))
    finetune_hf(cfg, None, second, max_steps=1, progress=False, model=model, tokenizer=byte_tokenizer())
    _, started = A.load_adapter(second)
    for i, w in trained.items():  # one step at lr 1e-12: still the first run's weights
        torch.testing.assert_close(started[i], w, rtol=1e-6, atol=1e-9)
    fresh = parse_finetune_config(raw_config(optim={"lr": 1e-12}))
    finetune_hf(fresh, None, tmp_path / "fresh", max_steps=1, progress=False, model=model, tokenizer=byte_tokenizer())
    _, init = A.load_adapter(tmp_path / "fresh")
    assert any((init[i] - w).abs().max() > 1e-3 for i, w in trained.items())  # without it: another start
    with pytest.raises(ValueError, match="window / chunk size 8 / 1, this run trains 16 / 1"):
        finetune_hf(parse_finetune_config(raw_config(nats={**nats, "window": 16})), None, tmp_path / "w", max_steps=1,
                    progress=False, model=model, tokenizer=byte_tokenizer())
    with pytest.raises(ConfigError, match="init_adapter and nats.init_logits both given"):
        parse_finetune_config(raw_config(nats={**nats, "init_logits": [-2.0, -1.0, 1.0]}))
