"""From-scratch training of the small GPT (full attention or NAtS) on the configured data mix.

Writes into the output folder: the final model (`model.safetensors` + `config.json`), the
resolved `train_config.json`, `metrics.jsonl` (one JSON object per log / validation event) and
`train_state/` (weights, AdamW moments and the step, all safetensors/JSON, for `--resume`).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nats_model.models.gpt import GPT
from nats_model.train.batches import BatchMaker, answer_exact_match, collate, weighted_loss
from nats_model.train.config import TrainConfig, config_to_dict

STATE_DIR = "train_state"


@dataclass
class TrainResult:
    """What a training run reports on its last output line."""

    steps: int
    train_loss: float | None
    val_loss: float | None
    kept_fraction: float | None
    seconds: float

    def as_dict(self) -> dict:
        return {"steps": self.steps, "train_loss": self.train_loss, "val_loss": self.val_loss,
                "kept_fraction": self.kept_fraction, "seconds": round(self.seconds, 2)}


def lr_at(step: int, total: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from `lr` to `min_ratio * lr` at `total`."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def stage_at(cfg: TrainConfig, step: int):
    """The curriculum stage that optimizer step `step` (0-based) belongs to."""
    end = 0
    for stage in cfg.stages:
        end += stage.steps
        if step < end:
            return stage
    return cfg.stages[-1]


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas)


def save_state(out: Path, model: GPT, opt: torch.optim.AdamW, step: int) -> None:
    """Weights, AdamW moments and the step under `out/train_state` (no pickle)."""
    from safetensors.torch import save_file

    d = out / STATE_DIR
    model.save_pretrained(d)
    tensors, steps = {}, {}
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        st = opt.state.get(p)
        if st:
            tensors[f"{i}.exp_avg"] = st["exp_avg"].contiguous()
            tensors[f"{i}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
            steps[str(i)] = float(st["step"])
    save_file(tensors, str(d / "optimizer.safetensors"))
    (d / "state.json").write_text(json.dumps({"step": step, "param_steps": steps}))


def load_state(out: Path, model: GPT, opt: torch.optim.AdamW) -> int:
    """Restore what `save_state` wrote; returns the step to continue from."""
    from safetensors.torch import load_file

    d = out / STATE_DIR
    if not (d / "state.json").is_file():
        raise FileNotFoundError(f"--resume: no training state in {d} (run without --resume first)")
    saved = GPT.from_pretrained(d)
    if saved.config != model.config:
        raise ValueError(f"--resume: the model config in {d} differs from the config file's model section")
    model.load_state_dict(saved.state_dict())
    meta = json.loads((d / "state.json").read_text())
    tensors = load_file(str(d / "optimizer.safetensors"))
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        if str(i) in meta["param_steps"]:
            opt.state[p] = {"step": torch.tensor(meta["param_steps"][str(i)]),
                            "exp_avg": tensors[f"{i}.exp_avg"], "exp_avg_sq": tensors[f"{i}.exp_avg_sq"]}
    return int(meta["step"])


class Validator:
    """Fixed validation data: held-out text windows and, per task, examples at spread depths."""

    def __init__(self, cfg: TrainConfig, train_maker: BatchMaker):
        ev = cfg.eval
        self.seq_len = ev.seq_len or cfg.stages[-1].seq_len
        self.batch_size = ev.batch_size
        rng = random.Random(10_000 + cfg.seed)
        self.text_batches = []
        if cfg.data.text_weight > 0:
            held = BatchMaker(cfg.data, split="heldout")
            for _ in range(ev.text_batches):
                self.text_batches.append(held.batch(rng, ev.batch_size, self.seq_len, kinds=["text"] * ev.batch_size))
        self.task_batches: dict[str, list] = {}
        n = ev.examples_per_task
        for name, mix in cfg.data.tasks.items():
            if mix.weight <= 0:
                continue
            rows = [train_maker.sequence(rng, name, self.seq_len, depth=i / max(1, n - 1)) for i in range(n)]
            self.task_batches[name] = [
                collate(rows[i : i + ev.batch_size], [name] * len(rows[i : i + ev.batch_size]))
                for i in range(0, n, ev.batch_size)
            ]

    @torch.no_grad()
    def run(self, model: GPT) -> dict:
        was_training = model.training
        model.eval()
        out: dict = {}
        losses, kept = [], []
        if self.text_batches:
            tl = []
            for b in self.text_batches:
                logits, loss = model(b.inputs, b.targets)
                tl.append(float(loss))
                kept.append(model.kept_fraction())
            out["val_text_loss"] = sum(tl) / len(tl)
            losses.append(out["val_text_loss"])
        for name, batches in self.task_batches.items():
            hits, al = [], []
            for b in batches:
                logits, _ = model(b.inputs)
                al.append(float(weighted_loss(logits, b)))
                hits.append(answer_exact_match(logits, b))
                kept.append(model.kept_fraction())
            out[f"val_{name}_loss"] = sum(al) / len(al)
            out[f"acc_{name}"] = float(torch.cat(hits).nanmean())
            losses.append(out[f"val_{name}_loss"])
        out["val_loss"] = sum(losses) / len(losses) if losses else None
        kept = [k for k in kept if k is not None]
        out["kept_fraction"] = sum(kept) / len(kept) if kept else 1.0
        model.train(was_training)
        return out


def save_output(model: GPT, out: Path, cfg: TrainConfig) -> None:
    """The trained model in `out`: a GPT checkpoint, or with `export: hf_llama` a Hugging Face Llama folder."""
    if cfg.export == "hf_llama":
        from nats_model.models.gpt_to_llama import export_llama

        export_llama(model, out)
    else:
        model.save_pretrained(out)


def train(cfg: TrainConfig, out_dir: str | Path, max_steps: int | None = None, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train per `cfg` into `out_dir`; `max_steps` truncates the curriculum (schedule included)."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = cfg.total_steps if max_steps is None else min(max_steps, cfg.total_steps)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model)
    opt = make_optimizer(model, cfg)
    start = load_state(out, model, opt) if resume else 0
    if not resume:
        (out / "metrics.jsonl").write_text("")
    (out / "train_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2, default=list) + "\n")
    maker = BatchMaker(cfg.data, split="train")
    validator = Validator(cfg, maker)
    metrics = open(out / "metrics.jsonl", "a")

    def log(record: dict) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    t0 = time.time()
    model.train()
    train_loss, last_val, ema = None, None, None
    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    done = start
    base_lam = model.config.lam
    for step in bar:
        stage = stage_at(cfg, step)
        model.config.lam = base_lam if stage.lam is None else stage.lam  # every layer reads the shared config
        lr = lr_at(step, total, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = maker.batch(random.Random(cfg.seed * 1_000_003 + step), stage.batch_size, stage.seq_len,
                            weights=stage.weights)
        logits, _ = model(batch.inputs)
        loss = weighted_loss(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        train_loss = float(loss.detach())
        ema = train_loss if ema is None else 0.95 * ema + 0.05 * train_loss
        kept = model.kept_fraction()
        bar.set_postfix(loss=f"{ema:.3f}", T=stage.seq_len, **({"kept": f"{kept:.3f}"} if kept is not None else {}))
        done = step + 1
        if done % cfg.log_interval == 0 or done == total:
            log({"step": done, "seq_len": stage.seq_len, "lr": lr, "train_loss": train_loss, "train_loss_ema": ema,
                 "kept_fraction": kept, "seconds": round(time.time() - t0, 2)})
        timed_out = cfg.time_limit_s is not None and time.time() - t0 > cfg.time_limit_s
        if done % cfg.eval.interval == 0 or done == total or timed_out:
            last_val = validator.run(model)
            log({"step": done, "seconds": round(time.time() - t0, 2), **last_val})
            bar.write(f"step {done}: " + " ".join(f"{k}={v:.4g}" for k, v in last_val.items() if v is not None),
                      file=sys.stderr)
        if done % cfg.checkpoint_interval == 0 or done == total or timed_out:
            save_state(out, model, opt, done)
            model.config.lam = base_lam  # the checkpoint's config keeps the configured value
            save_output(model, out, cfg)
        if timed_out:
            bar.write(f"time limit {cfg.time_limit_s}s reached at step {done}; stopping", file=sys.stderr)
            break
    bar.close()
    metrics.close()
    if last_val is None and start >= total:  # nothing left to do: still report a validation
        last_val = validator.run(model)
        save_output(model, out, cfg)
    return TrainResult(steps=done, train_loss=train_loss,
                       val_loss=last_val.get("val_loss") if last_val else None,
                       kept_fraction=last_val.get("kept_fraction") if last_val else None,
                       seconds=time.time() - t0)
