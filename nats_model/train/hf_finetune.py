"""NAtS scorer fine-tuning for Hugging Face causal LMs (the paper's LLM recipe): `natsbench finetune --model DIR`.

The base model (a local Llama / Mistral / Qwen2 / Qwen3 folder) is frozen (`requires_grad False`, no
weight changed or copied); `nats_model.models.hf_nats.attach_nats_scorers` adds one scorer per layer,
the only trained parameters. One model object is both teacher and student: the teacher forward runs
plain SDPA attention, the student forward the NAtS training attention (straight-through Gumbel types,
the paper's mask gradient, lambda inside the backward), switched with `model.set_attn_implementation`.
The student's implementation stays selected until the backward is done, because gradient
checkpointing (`gradient_checkpointing: true`) recomputes the layers during the backward; the base's
own implementation is restored at the end.

Validation (every `eval.interval` steps and at the end) answers held-out task examples greedily through
the KV engine with the `nats` policy, i.e. the inference cache the adapter will get in `natsbench eval`.
Loss, schedule and data follow `nats_model.train.finetune` (shared `distill_loss`, `lr_factor`,
`loss_positions`); the batches come from `nats_model.data.hf_batches.TokenizedBatchMaker` (the
workloads mix in the model's tokenizer plus `local_data` files). Output folder: the adapter
(`adapter.safetensors` + `adapter_config.json`, written by `nats_model.adapter.save_adapter`),
`finetune_config.json`, `metrics.jsonl` and `train_state/` for `--resume`.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from pathlib import Path

import torch

from nats_model.models.hf_nats import TRAIN_ATTN_IMPLEMENTATION, HFNatsScorers, attach_nats_scorers
from nats_model.train.finetune import DistillOutput, FinetuneResult, distill_loss, loss_positions, lr_factor
from nats_model.train.finetune_config import FinetuneConfig, NatsSettings, finetune_config_to_dict
from nats_model.train.trainer import stage_at

STATE_DIR = "train_state"
TEACHER_ATTN_IMPLEMENTATION = "sdpa"


class HFDistill:
    """`DistillModel` for a Hugging Face causal LM: the frozen base with NAtS scorers attached
    (`self.scorers`, the only trainable parameters). `student` runs the NAtS training attention and
    leaves it selected (a checkpointed backward recomputes under it), `teacher` runs SDPA without
    grad and switches back; `close()` restores the base's implementation and detaches the scorers."""

    def __init__(self, model, nats: NatsSettings, gradient_checkpointing: bool = False, need_logits: bool = False):
        nats = nats.with_defaults("hf")
        self.model = model
        self.model.requires_grad_(False)
        self.original_implementation = model.config._attn_implementation
        self.scorers: HFNatsScorers = attach_nats_scorers(
            model, window=int(nats.window), chunk_size=nats.chunk_size, global_bias=float(nats.global_bias),
            lam=float(nats.lam))
        self.need_logits = need_logits
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            kwargs = {"use_reentrant": False}  # reentrant checkpoints pass no gradient when no layer input needs one
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            model.train()  # transformers checkpoints only in training mode (Llama-like models have no dropout
            # but attention_dropout, which must be 0 for a distillation against the same weights)
            if float(getattr(model.config, "attention_dropout", 0.0) or 0.0) != 0.0:
                raise ValueError("gradient_checkpointing needs attention_dropout 0 in the base config")
        else:
            model.eval()

    def _run(self, inputs: torch.Tensor) -> DistillOutput:
        out = self.model.model(input_ids=inputs, use_cache=False)
        hidden = out.last_hidden_state  # (B, T, d), after the final norm
        logits = self.model.lm_head(hidden) if self.need_logits else hidden.new_empty(0)  # (B, T, V)
        return DistillOutput(hidden=hidden, logits=logits)

    def _select(self, name: str) -> None:
        if self.model.config._attn_implementation != name:
            self.model.set_attn_implementation(name)

    def student(self, inputs: torch.Tensor) -> DistillOutput:
        from nats_model.models.hf_nats import register_train_attention

        register_train_attention()
        self._select(TRAIN_ATTN_IMPLEMENTATION)
        self.scorers.train()
        return self._run(inputs)

    @torch.no_grad()
    def teacher(self, inputs: torch.Tensor) -> DistillOutput:
        previous = self.model.config._attn_implementation
        self._select(TEACHER_ATTN_IMPLEMENTATION)
        try:
            return self._run(inputs)
        finally:
            self._select(previous)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.scorers.parameters())

    def kept_fraction(self) -> float | None:
        return self.scorers.kept_fraction()

    @torch.no_grad()
    def init_scorers(self, inputs: torch.Tensor, logits_gls: list[float]) -> None:
        """Shift every scorer so that the mean scorer input (over `inputs` (B, T)) scores `logits_gls`."""
        captured: dict[int, torch.Tensor] = {}
        layers = self.model.model.layers

        def capture(i):
            def hook(module, args, kwargs):
                captured[i] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            return hook

        hooks = [layer.self_attn.register_forward_pre_hook(capture(i), with_kwargs=True)
                 for i, layer in enumerate(layers)]
        try:
            self.teacher(inputs)
        finally:
            for h in hooks:
                h.remove()
        target = torch.tensor([float(x) for x in logits_gls])  # (3,) in (G, L, S) order
        for i, x in captured.items():
            weight = self.scorers.proj[str(i)].weight  # (Hkv*3, d): row h*3 + t
            u = x.reshape(-1, x.shape[-1]).float().mean(0)  # (d,)
            w = weight.view(-1, 3, weight.shape[-1])  # (Hkv, 3, d)
            w -= (w @ u).unsqueeze(-1) * u / u.dot(u)  # the mean input now scores 0 ...
            w += target.to(w).view(1, 3, 1) * u / u.dot(u)  # ... then exactly `target`

    def close(self) -> None:
        """Restore the base's attention implementation and take the scorers off the model."""
        self._select(self.original_implementation)
        if self.gradient_checkpointing:
            off = getattr(self.model, "activation_checkpointing_disable", None) or self.model.gradient_checkpointing_disable
            off()
        self.model.eval()
        self.scorers.remove()


class HFValidator:
    """Fixed validation examples (a held-out seed) of every task with a weight: each is answered
    greedily through the KV engine with the `nats` policy (the inference cache: argmax types plus the
    Global bias, the model's W and C), scored by exact match of the first answer line's tokens (what
    the GPT's teacher-forced validation scores); also the mean
    kept fraction. `run` returns {"<task>_accuracy": ..., "kept_fraction": ...} ({} without tasks)."""

    def __init__(self, cfg: FinetuneConfig, maker, tokenizer):
        self.seq_len = cfg.eval.seq_len or cfg.stages[-1].seq_len
        self.batch_size = cfg.eval.batch_size
        self.tok = tokenizer
        self.pad_id = maker.pad_id
        rng = random.Random(cfg.seed + 7919)  # not a training stream (those are seed * 1_000_003 + step)
        self.examples = {task: [maker.task_example(rng, task, self.seq_len) for _ in range(cfg.eval.examples_per_task)]
                         for task, mix in cfg.data.tasks.items() if mix.weight > 0}

    @torch.no_grad()
    def run(self, model) -> dict:
        from nats_model.data.tasks import ANSWER_END
        from nats_model.engine.generation import generate
        from nats_model.policies import build

        if not self.examples:
            return {}
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device
        out, kept = {}, []
        try:
            for task, examples in self.examples.items():
                hits = []
                for i in range(0, len(examples), self.batch_size):
                    part = examples[i:i + self.batch_size]
                    wants = [answer.split(ANSWER_END)[0] for _, answer in part]
                    want_ids = [self.tok(w, add_special_tokens=False)["input_ids"] for w in wants]
                    n_new = max(len(w) for w in want_ids)
                    width = max(len(p) for p, _ in part)
                    ids = torch.full((len(part), width), self.pad_id, dtype=torch.long)
                    mask = torch.zeros_like(ids)
                    for r, (p_ids, _) in enumerate(part):  # left padding
                        ids[r, width - len(p_ids):] = torch.tensor(p_ids)
                        mask[r, width - len(p_ids):] = 1
                    res = generate(model, ids.to(dev), build("nats"), n_new, attention_mask=mask.to(dev))
                    for r, want in enumerate(want_ids):  # the answer's tokens, as teacher-forced exact match
                        hits.append(res.tokens[r, :len(want)].tolist() == list(want))
                    kept.append(res.kept_fraction)
                out[f"{task}_accuracy"] = sum(hits) / len(hits)
        finally:
            model.train(was_training)
        out["kept_fraction"] = sum(kept) / len(kept)
        return out


def save_train_state(out: Path, scorers: HFNatsScorers, opt: torch.optim.Optimizer, step: int) -> None:
    """Scorer weights, AdamW moments and the step under `out/train_state` (safetensors + JSON, no pickle)."""
    from safetensors.torch import save_file

    d = out / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"scorer.{i}": w.contiguous().cpu() for i, w in scorers.layer_weights().items()}
    steps = {}
    for j, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        st = opt.state.get(p)
        if st:
            tensors[f"opt.{j}.exp_avg"] = st["exp_avg"].contiguous().cpu()
            tensors[f"opt.{j}.exp_avg_sq"] = st["exp_avg_sq"].contiguous().cpu()
            steps[str(j)] = float(st["step"])
    save_file(tensors, str(d / "state.safetensors"))
    (d / "state.json").write_text(json.dumps({"step": step, "param_steps": steps}))


def load_train_state(out: Path, scorers: HFNatsScorers, opt: torch.optim.Optimizer) -> int:
    """Restore what `save_train_state` wrote; returns the step to continue from."""
    from safetensors.torch import load_file

    d = out / STATE_DIR
    if not (d / "state.json").is_file():
        raise FileNotFoundError(f"--resume: no training state in {d} (run without --resume first)")
    tensors = load_file(str(d / "state.safetensors"))
    scorers.load_layer_weights({int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("scorer.")})
    meta = json.loads((d / "state.json").read_text())
    device = next(scorers.parameters()).device
    for j, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        if str(j) in meta["param_steps"]:
            opt.state[p] = {"step": torch.tensor(meta["param_steps"][str(j)]),
                            "exp_avg": tensors[f"opt.{j}.exp_avg"].to(device),
                            "exp_avg_sq": tensors[f"opt.{j}.exp_avg_sq"].to(device)}
    return int(meta["step"])


def load_hf_base(model_dir: str | Path, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) of a local Hugging Face folder; ValueError naming what is missing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(model_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"--model {str(folder)!r}: not a Hugging Face model folder (no config.json)")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--model {str(folder)!r} has no usable tokenizer: {exc}") from None
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtypes[dtype])
    return model.to(device), tok


def _adapter_config(model, model_dir: Path | None, scorers: HFNatsScorers, nats: NatsSettings, steps: int):
    from nats_model import adapter as A

    sha = A.base_weights_sha256(model_dir) if model_dir is not None else None
    return A.AdapterConfig(**A.base_facts(model), base_sha256=sha, window=scorers.window,
                           chunk_size=scorers.chunk_size or 1, global_bias=scorers.global_bias,
                           lam=float(nats.lam), steps=steps, source="natsbench-finetune")


def _start_from_adapter(scorers, nats, base) -> None:
    """Copy the scorer weights of the adapter `nats.init_adapter` (checked against `base`: config fields and
    weight hash) into `scorers`; ValueError naming the adapter when its window or chunk size differ."""
    from nats_model import adapter as A

    acfg, weights = A.load_adapter(nats.init_adapter, base)
    ours = (nats.window, nats.chunk_size or 1)
    if (acfg.window, acfg.chunk_size) != ours:
        raise ValueError(f"nats.init_adapter {nats.init_adapter!r}: window / chunk size {acfg.window} / "
                         f"{acfg.chunk_size}, this run trains {ours[0]} / {ours[1]}")
    scorers.load_layer_weights({i: w.to(next(scorers.parameters()).device) for i, w in weights.items()})


def finetune_hf(cfg: FinetuneConfig, model_dir: str | Path | None, out_dir: str | Path, max_steps: int | None = None,
                resume: bool = False, progress: bool = True, device: str | None = None, dtype: str = "float32",
                model=None, tokenizer=None) -> FinetuneResult:
    """Fine-tune NAtS scorers of the Hugging Face model in `model_dir` per `cfg`, writing an adapter
    folder to `out_dir`. `max_steps` truncates the stages (and the schedule); `model` + `tokenizer`
    replace loading `model_dir` (tests; `model_dir` then only feeds the base weight hash)."""
    from tqdm import tqdm

    from nats_model import adapter as A
    from nats_model.data.hf_batches import TokenizedBatchMaker

    torch.set_num_threads(cfg.threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r} asked for, but no CUDA device is available (use --device cpu)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = cfg.total_steps if max_steps is None else min(max_steps, cfg.total_steps)
    torch.manual_seed(cfg.seed)
    if model is None:
        model, tokenizer = load_hf_base(model_dir, device=device, dtype=dtype)
    nats = cfg.nats.with_defaults("hf")
    maker = TokenizedBatchMaker(cfg.data, tokenizer, [(d.path, d.weight) for d in cfg.local_data])
    dm = HFDistill(model, nats, gradient_checkpointing=cfg.gradient_checkpointing,
                   need_logits=cfg.loss in ("logits_kl", "both"))
    dev = next(model.parameters()).device
    try:
        if nats.init_logits is not None and not resume:
            calib = maker.batch(random.Random(cfg.seed - 1), 4, cfg.stages[0].seq_len)
            dm.init_scorers(calib.inputs.to(dev), nats.init_logits)
        if nats.init_adapter is not None and not resume:
            _start_from_adapter(dm.scorers, nats, model_dir if model_dir is not None else model)
        opt = torch.optim.AdamW(dm.trainable_parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                weight_decay=cfg.optim.weight_decay)
        start = load_train_state(out, dm.scorers, opt) if resume else 0
        if not resume:
            (out / "metrics.jsonl").write_text("")
        (out / "finetune_config.json").write_text(
            json.dumps(finetune_config_to_dict(cfg), indent=2, default=list) + "\n")
        base_dir = Path(model_dir) if model_dir is not None else None
        validator = HFValidator(cfg, maker, tokenizer)

        def save(steps_done: int) -> None:
            save_train_state(out, dm.scorers, opt, steps_done)
            A.save_adapter(out, dm.scorers.layer_weights(), _adapter_config(model, base_dir, dm.scorers, nats,
                                                                            steps_done))

        t0 = time.time()
        loss_value, kept, ema, last_val = None, None, None, None
        with contextlib.ExitStack() as stack:
            metrics = stack.enter_context(open(out / "metrics.jsonl", "a"))
            bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, file=sys.stderr,
                       dynamic_ncols=True)
            done = start
            for step in bar:
                stage = stage_at(cfg, step)
                dm.scorers.lam = float(stage.lam if stage.lam is not None else nats.lam)
                lr = cfg.optim.lr * lr_factor(step, total, cfg.optim.warmup_fraction, cfg.optim.min_lr_ratio)
                for g in opt.param_groups:
                    g["lr"] = lr
                batch = maker.batch(random.Random(cfg.seed * 1_000_003 + step), stage.batch_size, stage.seq_len)
                weights = loss_positions(batch, cfg.text_all_positions).to(dev)  # (B, T)
                inputs = batch.inputs.to(dev)
                teacher = dm.teacher(inputs)
                student = dm.student(inputs)
                loss = distill_loss(student, teacher, weights, cfg.loss, cfg.kl_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(dm.trainable_parameters(), cfg.optim.grad_clip)
                opt.step()
                loss_value = float(loss.detach())
                ema = loss_value if ema is None else 0.9 * ema + 0.1 * loss_value
                kept = dm.kept_fraction()
                bar.set_postfix(loss=f"{ema:.4g}", T=stage.seq_len, kept=f"{kept:.3f}" if kept is not None else "-")
                done = step + 1
                if done % cfg.log_interval == 0 or done == total:
                    metrics.write(json.dumps({"step": done, "seq_len": stage.seq_len, "lr": lr, "loss": loss_value,
                                              "loss_ema": ema, "kept_fraction": kept,
                                              "seconds": round(time.time() - t0, 2)}) + "\n")
                    metrics.flush()
                timed_out = cfg.time_limit_s is not None and time.time() - t0 > cfg.time_limit_s
                if validator.examples and (done % cfg.eval.interval == 0 or done == total or timed_out):
                    last_val = validator.run(model)
                    metrics.write(json.dumps({"step": done, "seconds": round(time.time() - t0, 2), **last_val}) + "\n")
                    metrics.flush()
                    bar.write(f"step {done}: " + " ".join(f"{k}={v:.4g}" for k, v in last_val.items()),
                              file=sys.stderr)
                if done % cfg.checkpoint_interval == 0 or done == total or timed_out:
                    save(done)
                if timed_out:
                    bar.write(f"time limit {cfg.time_limit_s}s reached at step {done}; stopping", file=sys.stderr)
                    break
            bar.close()
        if done == start:  # nothing left to do (resumed at the end): still write the adapter
            save(done)
        if last_val is None and validator.examples:  # resumed at the end: still report a validation
            last_val = validator.run(model)
        kept_out = last_val["kept_fraction"] if last_val else kept
        return FinetuneResult(steps=done, loss=loss_value, kept_fraction=kept_out, seconds=time.time() - t0)
    finally:
        dm.close()
