"""NAtS scorer fine-tuning by distillation (the paper's LLM recipe at small scale).

The base model is frozen; only the type scorers are trained. The teacher is the same weights with
full attention; the student runs NAtS attention with straight-through Gumbel types, and its loss
is a distillation loss on the answer tokens (and text positions): `hidden_mse` (the paper: MSE
of the final-norm hidden states), `logits_kl` (KL(teacher || student) of the next-token
distributions) or `both`. The sparsity regulariser lambda acts inside the attention backward.

The model-specific part sits behind `DistillModel` (student forward, teacher forward, which
parameters train, save/resume), so a Hugging Face model can be served by another implementation;
`GPTDistill` serves the small GPT. Output folder: `model.safetensors` + `config.json` (attention
"nats" with the scorer settings, loadable by `GPT.from_pretrained`), `finetune_config.json`,
`metrics.jsonl` and `train_state/` for `--resume`.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from nats_model.models.gpt import GPT
from nats_model.train.batches import Batch, BatchMaker
from nats_model.train.config import EvalConfig, TrainConfig
from nats_model.train.finetune_config import FinetuneConfig, NatsSettings, finetune_config_to_dict
from nats_model.train.trainer import Validator, load_state, save_state, stage_at


@dataclass
class DistillOutput:
    """Final-norm hidden states (B, T, d) and next-token logits (B, T, V) of one forward."""

    hidden: torch.Tensor
    logits: torch.Tensor


class DistillModel(Protocol):
    """What the distillation loop needs from a model family."""

    def student(self, inputs: torch.Tensor) -> DistillOutput: ...  # NAtS attention, trainable scorers
    def teacher(self, inputs: torch.Tensor) -> DistillOutput: ...  # full attention, no grad
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...
    def kept_fraction(self) -> float | None: ...  # of the last student forward (inference types)


class GPTDistill:
    """`DistillModel` for the small GPT: a NAtS student built from a full-attention checkpoint
    (scorers new, every base weight frozen) and a full-attention teacher that shares the student's
    base tensors (no copy). `model` is the student `GPT` (saved as the fine-tuned checkpoint)."""

    def __init__(self, base: str | Path | GPT, nats: NatsSettings):
        nats = nats.with_defaults("gpt")
        base_model = base if isinstance(base, GPT) else GPT.from_pretrained(base)
        bcfg = base_model.config
        if bcfg.attention != "full":
            raise ValueError(f"the base model must use full attention, got attention={bcfg.attention!r}")
        scfg = replace(bcfg, attention="nats", window=nats.window, lam=float(nats.lam),
                       global_bias=float(nats.global_bias), chunk_size=nats.chunk_size)
        self.model = GPT(scfg)
        missing, unexpected = self.model.load_state_dict(base_model.state_dict(), strict=False)
        if unexpected or any(".scorer." not in k for k in missing):
            raise ValueError(f"base checkpoint does not fit the student: missing {missing}, unexpected {unexpected}")
        for name, p in self.model.named_parameters():
            p.requires_grad_(".scorer." in name)
        self.teacher_model = GPT(bcfg)
        shared = {k: v for k, v in self.model.state_dict().items() if ".scorer." not in k}
        self.teacher_model.load_state_dict(shared, assign=True)  # same storage as the student's base
        self.teacher_model.requires_grad_(False).eval()
        self._hidden: dict[int, torch.Tensor] = {}
        for m in (self.model, self.teacher_model):
            m.norm.register_forward_hook(lambda mod, args, out: self._hidden.__setitem__(id(mod), out))

    def _run(self, model: GPT, inputs: torch.Tensor) -> DistillOutput:
        logits, _ = model(inputs)
        return DistillOutput(hidden=self._hidden.pop(id(model.norm)), logits=logits)

    def student(self, inputs: torch.Tensor) -> DistillOutput:
        return self._run(self.model, inputs)

    @torch.no_grad()
    def teacher(self, inputs: torch.Tensor) -> DistillOutput:
        return self._run(self.teacher_model, inputs)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def kept_fraction(self) -> float | None:
        return self.model.kept_fraction()

    @torch.no_grad()
    def init_scorers(self, inputs: torch.Tensor, logits_gls: list[float]) -> None:
        """Shift every scorer so that the mean scorer input (over `inputs` (B, T)) scores `logits_gls`."""
        captured: list[torch.Tensor] = []
        hooks = [b.attn.register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
                 for b in self.teacher_model.blocks]
        try:
            self.teacher_model(inputs)
        finally:
            for h in hooks:
                h.remove()
        target = torch.tensor([float(x) for x in logits_gls])  # (3,) in (G, L, S) order
        for block, x in zip(self.model.blocks, captured, strict=True):
            proj = block.attn.scorer.proj  # weight (Hkv*3, d): row h*3 + t
            u = x.reshape(-1, x.shape[-1]).mean(0)  # (d,)
            w = proj.weight.view(-1, 3, proj.weight.shape[-1])  # (Hkv, 3, d)
            w -= (w @ u).unsqueeze(-1) * u / u.dot(u)  # the mean input now scores 0 ...
            w += target.view(1, 3, 1) * u / u.dot(u)  # ... then exactly `target`


def loss_positions(batch: Batch, text_all_positions: bool) -> torch.Tensor:
    """Float (B, T) weights of the positions the distillation loss sees: the answer targets of
    task rows, and (optionally) every real target of text rows."""
    mask = batch.answer_mask.clone()
    if text_all_positions:
        for i, kind in enumerate(batch.kinds):
            if kind == "text":
                mask[i] = batch.targets[i] >= 0
    return mask.float()


def distill_loss(student: DistillOutput, teacher: DistillOutput, weights: torch.Tensor, kind: str,
                 kl_weight: float = 1.0) -> torch.Tensor:
    """Mean over rows (with any weight) of the weighted per-position loss. weights (B, T)."""
    per_pos = torch.zeros_like(weights)  # (B, T)
    if kind in ("hidden_mse", "both"):
        per_pos = per_pos + (student.hidden.float() - teacher.hidden.float()).pow(2).mean(-1)
    if kind in ("logits_kl", "both"):
        logp_s = F.log_softmax(student.logits.float(), -1)  # (B, T, V)
        logp_t = F.log_softmax(teacher.logits.float(), -1)
        kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)  # (B, T)
        per_pos = per_pos + (kl_weight if kind == "both" else 1.0) * kl
    if kind not in ("hidden_mse", "logits_kl", "both"):
        raise ValueError(f"loss must be one of ('hidden_mse', 'logits_kl', 'both'), got {kind!r}")
    rows = weights.sum(1) > 0  # (B,)
    if not bool(rows.any()):
        return per_pos.sum() * 0.0
    per_row = (per_pos * weights).sum(1)[rows] / weights.sum(1)[rows]
    return per_row.mean()


def lr_factor(step: int, total: int, warmup_fraction: float, min_ratio: float) -> float:
    """The paper's linear schedule: min_ratio -> 1 over the first warmup_fraction of `total`, then -> min_ratio."""
    warm = int(round(warmup_fraction * total))
    if warm > 0 and step < warm:
        return min_ratio + (1 - min_ratio) * step / warm
    span = max(1, total - 1 - warm)
    return 1 - (1 - min_ratio) * min(1.0, (step - warm) / span)


@dataclass
class FinetuneResult:
    """What a fine-tuning run reports on its last output line."""

    steps: int
    loss: float | None
    kept_fraction: float | None
    seconds: float

    def as_dict(self) -> dict:
        return {"steps": self.steps, "loss": self.loss, "kept_fraction": self.kept_fraction,
                "seconds": round(self.seconds, 2)}


def _validator(cfg: FinetuneConfig, student_cfg, maker: BatchMaker) -> Validator:
    ev = cfg.eval
    tcfg = TrainConfig(model=student_cfg, data=cfg.data, stages=cfg.stages, seed=cfg.seed,
                       eval=EvalConfig(interval=ev.interval, seq_len=ev.seq_len, text_batches=ev.text_batches,
                                       batch_size=ev.batch_size, examples_per_task=ev.examples_per_task))
    return Validator(tcfg, maker)


def finetune(cfg: FinetuneConfig, out_dir: str | Path, max_steps: int | None = None, resume: bool = False,
             progress: bool = True, base_model: GPT | None = None) -> FinetuneResult:
    """Fine-tune the scorers per `cfg` into `out_dir`; `max_steps` truncates the stages (and the schedule).
    `base_model` replaces loading `cfg.base` (tests)."""
    from tqdm import tqdm

    if base_model is None and cfg.base is None:
        raise ValueError("no base model: give `base:` in the config (a GPT checkpoint folder) or --model DIR")
    if cfg.local_data:
        raise ValueError("local_data needs a Hugging Face base model (--model DIR); the byte-level GPT trains "
                         "on the workloads mix only")
    if cfg.gradient_checkpointing:
        raise ValueError("gradient_checkpointing is for Hugging Face base models (--model DIR)")
    if cfg.nats.init_adapter is not None:
        raise ValueError("nats.init_adapter is for Hugging Face base models (--model DIR): a GPT's scorers live "
                         "in its own checkpoint")
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = cfg.total_steps if max_steps is None else min(max_steps, cfg.total_steps)
    torch.manual_seed(cfg.seed)
    dm = GPTDistill(base_model if base_model is not None else cfg.base, cfg.nats)
    maker = BatchMaker(cfg.data, split="train")
    if cfg.nats.init_logits is not None and not resume:
        calib = maker.batch(random.Random(cfg.seed - 1), 4, cfg.stages[0].seq_len)
        dm.init_scorers(calib.inputs, cfg.nats.init_logits)
    opt = torch.optim.AdamW(dm.trainable_parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    start = load_state(out, dm.model, opt) if resume else 0
    if not resume:
        (out / "metrics.jsonl").write_text("")
    (out / "finetune_config.json").write_text(json.dumps(finetune_config_to_dict(cfg), indent=2, default=list) + "\n")
    validator = _validator(cfg, dm.model.config, maker)
    metrics = open(out / "metrics.jsonl", "a")

    def log(record: dict) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    t0 = time.time()
    dm.model.train()
    loss_value, kept, ema, last_val = None, None, None, None
    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    done = start
    for step in bar:
        stage = stage_at(cfg, step)
        lr = cfg.optim.lr * lr_factor(step, total, cfg.optim.warmup_fraction, cfg.optim.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = maker.batch(random.Random(cfg.seed * 1_000_003 + step), stage.batch_size, stage.seq_len)
        weights = loss_positions(batch, cfg.text_all_positions)  # (B, T)
        teacher = dm.teacher(batch.inputs)
        student = dm.student(batch.inputs)
        loss = distill_loss(student, teacher, weights, cfg.loss, cfg.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(dm.trainable_parameters(), cfg.optim.grad_clip)
        opt.step()
        loss_value = float(loss.detach())
        ema = loss_value if ema is None else 0.9 * ema + 0.1 * loss_value
        kept = dm.kept_fraction()
        bar.set_postfix(loss=f"{ema:.4f}", T=stage.seq_len, kept=f"{kept:.3f}" if kept is not None else "-")
        done = step + 1
        if done % cfg.log_interval == 0 or done == total:
            log({"step": done, "seq_len": stage.seq_len, "lr": lr, "loss": loss_value, "loss_ema": ema,
                 "kept_fraction": kept, "seconds": round(time.time() - t0, 2)})
        timed_out = cfg.time_limit_s is not None and time.time() - t0 > cfg.time_limit_s
        if done % cfg.eval.interval == 0 or done == total or timed_out:
            last_val = validator.run(dm.model)
            log({"step": done, "seconds": round(time.time() - t0, 2), **last_val})
            bar.write(f"step {done}: " + " ".join(f"{k}={v:.4g}" for k, v in last_val.items() if v is not None),
                      file=sys.stderr)
        if done % cfg.checkpoint_interval == 0 or done == total or timed_out:
            save_state(out, dm.model, opt, done)
            dm.model.save_pretrained(out)
        if timed_out:
            bar.write(f"time limit {cfg.time_limit_s}s reached at step {done}; stopping", file=sys.stderr)
            break
    bar.close()
    metrics.close()
    if last_val is None:  # nothing left to do (resumed at the end): still save and report a validation
        last_val = validator.run(dm.model)
        dm.model.save_pretrained(out)
    return FinetuneResult(steps=done, loss=loss_value,
                          kept_fraction=last_val.get("kept_fraction") if last_val else kept,
                          seconds=time.time() - t0)
