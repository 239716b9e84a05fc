"""NAtS scorer fine-tuning by distillation: frozen base, trained scorers, loss, CLI, config."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from nats_model.models.gpt import GPT, GPTConfig
from nats_model.train.batches import BatchMaker
from nats_model.train.config import ConfigError
from nats_model.train.finetune import GPTDistill, distill_loss, finetune, loss_positions, lr_factor
from nats_model.train.finetune_config import NatsSettings, parse_finetune_config
from orchestrator.cli import main as cli_main


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, d_model=32, n_head=2, n_kv_head=1, attention="full", max_seq_len=256))
    folder = tmp_path_factory.mktemp("base")
    model.save_pretrained(folder)
    return folder


def raw_config(base, **over) -> dict:
    raw = {
        "base": str(base),
        "nats": {"window": 4, "lam": 0.0, "global_bias": 0.0, "init_logits": [0.0, 0.0, 0.0]},
        "loss": "logits_kl",
        "data": {"text_weight": 0.0, "text_max_bytes": 100_000,  # text only where a test needs it (corpus load ~3 s)
                 "tasks": {"passkey": {"weight": 1.0, "params": {"digits": [2, 3]}}}},
        "stages": [{"seq_len": 128, "steps": 4, "batch_size": 2}],
        "optim": {"lr": 1e-2},
        "eval": {"interval": 4, "batch_size": 4, "examples_per_task": 4},
        "log_interval": 1,
        "checkpoint_interval": 4,
        "threads": 1,
    }
    raw.update(over)
    return raw


def test_base_frozen_scorers_trained(base_dir, tmp_path):
    cfg = parse_finetune_config(raw_config(base_dir))
    finetune(cfg, tmp_path / "ft", progress=False)
    base, ft = GPT.from_pretrained(base_dir), GPT.from_pretrained(tmp_path / "ft")
    assert ft.config.attention == "nats" and ft.config.window == 4
    ft_state, n_scorers = ft.state_dict(), 0
    for name, value in base.state_dict().items():
        assert torch.equal(value, ft_state[name]), f"base weight {name} changed"
    torch.manual_seed(cfg.seed)  # rebuild the scorers the run started from (same seed -> same init)
    start = GPTDistill(base_dir, cfg.nats)
    calib = BatchMaker(cfg.data).batch(random.Random(cfg.seed - 1), 4, 128)
    start.init_scorers(calib.inputs, cfg.nats.init_logits)
    for name, value in start.model.state_dict().items():
        if ".scorer." in name:
            n_scorers += 1
            assert not torch.allclose(value, ft_state[name]), f"scorer {name} did not move"
    assert n_scorers == 2


def test_init_scorers_sets_mean_logits(base_dir):
    dm = GPTDistill(base_dir, NatsSettings(window=4))
    batch = BatchMaker(parse_finetune_config(raw_config(base_dir)).data).batch(random.Random(3), 2, 128)
    target = [-2.0, -0.5, 1.5]
    dm.init_scorers(batch.inputs, target)
    captured = []
    hook = dm.model.blocks[0].attn.scorer.register_forward_hook(lambda m, a, o: captured.append((a[0], o)))
    dm.model.eval()
    dm.student(batch.inputs)
    hook.remove()
    x, _ = captured[0]
    logits = dm.model.blocks[0].attn.scorer(x.reshape(-1, x.shape[-1]).mean(0).view(1, 1, -1))  # (1, Hkv, 1, 3)
    assert torch.allclose(logits.flatten(), torch.tensor(target), atol=1e-4)
    assert dm.model.kept_fraction() < 0.6  # mostly SW at the start: a window of 4 in 64 tokens plus a few


def test_teacher_is_full_attention_and_shares_weights(base_dir):
    dm = GPTDistill(base_dir, NatsSettings(window=4))
    base = GPT.from_pretrained(base_dir)
    idx = torch.randint(0, 256, (2, 40))
    assert torch.allclose(dm.teacher(idx).logits, base(idx)[0], atol=1e-5)
    assert dm.teacher_model.embed.weight.data_ptr() == dm.model.embed.weight.data_ptr()
    assert {n for n, p in dm.model.named_parameters() if p.requires_grad} == {
        f"blocks.{i}.attn.scorer.proj.weight" for i in range(2)}


def test_loss_kinds_and_positions(base_dir):
    dm = GPTDistill(base_dir, NatsSettings(window=2))
    raw = raw_config(base_dir)
    raw["data"]["text_weight"] = 0.5
    batch = BatchMaker(parse_finetune_config(raw).data).batch(random.Random(0), 2, 128, kinds=["passkey", "text"])
    w = loss_positions(batch, text_all_positions=True)
    assert w[0].sum() == batch.answer_mask[0].sum() > 0 and w[1].sum() == 128
    assert loss_positions(batch, text_all_positions=False)[1].sum() == 0
    t = dm.teacher(batch.inputs)
    for kind in ("hidden_mse", "logits_kl", "both"):
        assert float(distill_loss(t, t, w, kind)) == pytest.approx(0.0, abs=1e-6)  # student == teacher
    dm.model.train()
    s = dm.student(batch.inputs)
    mse, kl = (float(distill_loss(s, t, w, k).detach()) for k in ("hidden_mse", "logits_kl"))
    assert mse > 0 and kl > 0
    assert float(distill_loss(s, t, w, "both", kl_weight=2.0).detach()) == pytest.approx(mse + 2 * kl, rel=1e-5)
    with pytest.raises(ValueError, match="hidden_mse"):
        distill_loss(s, t, w, "mse")


def test_lr_schedule_10_100_10():
    f = [lr_factor(s, 100, 0.1, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(f[:10], f[1:11], strict=True))
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


@pytest.mark.slow
def test_loss_decreases(base_dir, tmp_path):
    # lam = 0: the student can match the teacher exactly by typing everything Global
    raw = raw_config(base_dir, stages=[{"seq_len": 128, "steps": 36, "batch_size": 4}],
                     optim={"lr": 5e-2, "warmup_fraction": 0.0}, eval={"interval": 1000, "examples_per_task": 2})
    finetune(parse_finetune_config(raw), tmp_path / "ft", progress=False)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert len(losses) == 36
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.5 * first, (first, last)


@pytest.mark.slow
def test_cli_writes_loadable_checkpoint_and_json(base_dir, tmp_path, capsys):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(raw_config(base_dir, nats={"window": 8, "lam": 1e-4, "global_bias": 0.2})))
    out = tmp_path / "out"
    assert cli_main(["finetune", str(path), "--out", str(out), "--steps", "3", "--no-progress"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {"steps", "loss", "kept_fraction", "seconds"} and last["steps"] == 3
    assert 0 < last["kept_fraction"] <= 1
    model = GPT.from_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["attention"], cfg["window"], cfg["lam"], cfg["global_bias"]) == ("nats", 8, 1e-4, 0.2)
    assert model(torch.randint(0, 256, (1, 20)))[0].shape == (1, 20, 256)
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 3
    # --resume continues from the saved step
    assert cli_main(["finetune", str(path), "--out", str(out), "--steps", "4", "--resume", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 4


def test_config_errors_name_the_field(base_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="loss"):
        parse_finetune_config(raw_config(base_dir, loss="mse"))
    with pytest.raises(ConfigError, match="nats.init_logits"):
        parse_finetune_config(raw_config(base_dir, nats={"init_logits": [1.0]}))
    with pytest.raises(ConfigError, match="nats.colour"):
        parse_finetune_config(raw_config(base_dir, nats={"colour": 1}))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw_config(base_dir, optim={"warmup_fraction": 2.0})))
    assert cli_main(["finetune", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "warmup_fraction" in capsys.readouterr().err
