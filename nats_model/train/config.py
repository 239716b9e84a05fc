"""The training configuration: a YAML file validated into dataclasses, errors name the bad field.

Example (see `configs/train_tiny_base.yaml`):

    model: {n_layer: 3, d_model: 128, n_head: 4, attention: full}
    data:
      text_weight: 0.2
      tasks:
        passkey: {weight: 0.3}
        niah_multikey: {weight: 0.4, params: {num_keys: [1, 4]}}   # [lo, hi]: drawn per example
    stages: [{seq_len: 128, steps: 300, batch_size: 32}, {seq_len: 512, steps: 600, batch_size: 32}]
    optim: {lr: 2.0e-3, warmup_steps: 100}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats_model.data.tasks import TASKS
from nats_model.models.gpt_config import GPTConfig


class ConfigError(ValueError):
    """A training config field is missing, unknown or out of range (the message names it)."""


@dataclass
class TaskMix:
    """One synthetic task in the data mix: its sampling weight and task parameters.

    A parameter given as a two-element list `[lo, hi]` of integers is drawn uniformly per example.
    """

    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """The data mix: real text (weight, folder or the stdlib corpus) plus synthetic tasks.

    Task examples fill a sequence with prompt + answer + end marker; their loss weighs the answer
    tokens 1 and the prompt tokens `prompt_loss_weight` (answer-focused loss). Their prompt length
    is drawn in [min_context_fraction, 1] x the room the sequence leaves.
    """

    text_weight: float = 0.2
    text_dir: str | None = None
    text_max_bytes: int | None = 20_000_000
    tasks: dict[str, TaskMix] = field(default_factory=dict)
    prompt_loss_weight: float = 0.1
    min_context_fraction: float = 0.5
    # Hugging Face fine-tuning only: task prompts go through the tokenizer's chat template as one user turn
    # (context and question) with the answer prefix opening the assistant turn, exactly as the workloads'
    # `chat=on` encodes them at evaluation (`nats_model.data.tasks.split_question`).
    chat: bool = False


@dataclass
class Stage:
    """One curriculum stage: `steps` optimizer steps on sequences of `seq_len` tokens.

    `weights` optionally overrides the mix weights in this stage ({"text": w, task: w, ...});
    kinds it does not name keep their data-section weight (a task listed there with weight 0 is
    drawn only in the stages that give it a weight). `lam` (NAtS models) overrides the
    regulariser weight `model.lam` in this stage, e.g. 0 while the model first learns the tasks.
    """

    seq_len: int
    steps: int
    batch_size: int = 32
    weights: dict[str, float] | None = None
    lam: float | None = None  # NAtS models: the regulariser weight in this stage (default: model.lam)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to `min_lr_ratio * lr`, gradient clipping."""

    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0


@dataclass
class EvalConfig:
    """Periodic validation: held-out text loss and teacher-forced exact match per task."""

    interval: int = 200
    seq_len: int | None = None  # default: the last stage's seq_len
    text_batches: int = 2
    batch_size: int = 16
    examples_per_task: int = 16


@dataclass
class TrainConfig:
    """Everything `natsbench train` needs: model, data mix, curriculum, optimizer, validation."""

    model: GPTConfig
    data: DataConfig
    stages: list[Stage]
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    threads: int = 2
    log_interval: int = 10
    checkpoint_interval: int = 200
    time_limit_s: float | None = None
    # None: the output folder is a natsbench GPT checkpoint. "hf_llama": a Hugging Face Llama folder
    # (+ byte-level tokenizer) written from the trained weights (needs model.mlp "swiglu" and full
    # attention: then it is exactly a plain Llama); resume state stays in train_state/ either way.
    export: str | None = None

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


EXPORTS = (None, "hf_llama")


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {[f'{where}.{u}' for u in unknown]}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _positive(value: Any, where: str, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not allow_zero):
        kind = "integer" if integer else "number"
        raise ConfigError(f"{where} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")


def parse_config(raw: dict[str, Any]) -> TrainConfig:
    """Validate a loaded YAML mapping into a `TrainConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping, got {type(raw).__name__}")
    for key in ("model", "data", "stages"):
        if key not in raw:
            raise ConfigError(f"missing required field {key!r}")
    raw = dict(raw)
    try:
        model = GPTConfig.from_dict(raw.pop("model") or {})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: {exc}") from None
    data_raw = dict(raw.pop("data") or {})
    tasks_raw = data_raw.pop("tasks", {}) or {}
    if not isinstance(tasks_raw, dict):
        raise ConfigError("data.tasks must be a mapping of task name -> {weight, params}")
    tasks: dict[str, TaskMix] = {}
    for name, spec in tasks_raw.items():
        if name not in TASKS:
            raise ConfigError(f"data.tasks: unknown task {name!r}; known: {sorted(TASKS)}")
        mix = _build(TaskMix, spec or {}, f"data.tasks.{name}")
        _positive(mix.weight, f"data.tasks.{name}.weight", allow_zero=True)
        if not isinstance(mix.params, dict):
            raise ConfigError(f"data.tasks.{name}.params must be a mapping")
        tasks[name] = mix
    data = _build(DataConfig, {**data_raw, "tasks": tasks}, "data")
    _positive(data.text_weight, "data.text_weight", allow_zero=True)
    if data.text_weight + sum(t.weight for t in tasks.values()) <= 0:
        raise ConfigError("data: text_weight plus the task weights must be > 0")
    if not 0 <= data.prompt_loss_weight <= 1:
        raise ConfigError(f"data.prompt_loss_weight must be in [0, 1], got {data.prompt_loss_weight}")
    if not 0 < data.min_context_fraction <= 1:
        raise ConfigError(f"data.min_context_fraction must be in (0, 1], got {data.min_context_fraction}")
    if not isinstance(data.chat, bool):
        raise ConfigError(f"data.chat must be true or false, got {data.chat!r}")
    stages_raw = raw.pop("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError("stages must be a non-empty list of {seq_len, steps, batch_size}")
    stages = [_build(Stage, s, f"stages[{i}]") for i, s in enumerate(stages_raw)]
    for i, s in enumerate(stages):
        _positive(s.seq_len, f"stages[{i}].seq_len", integer=True)
        _positive(s.steps, f"stages[{i}].steps", integer=True)
        _positive(s.batch_size, f"stages[{i}].batch_size", integer=True)
        for kind, w in (s.weights or {}).items():
            if kind != "text" and kind not in tasks:
                raise ConfigError(f"stages[{i}].weights: {kind!r} is not in the mix; allowed: "
                                  f"{['text', *sorted(tasks)]}")
            _positive(w, f"stages[{i}].weights.{kind}", allow_zero=True)
        if s.lam is not None:
            _positive(s.lam, f"stages[{i}].lam", allow_zero=True)
            if model.attention != "nats":
                raise ConfigError(f"stages[{i}].lam needs model.attention 'nats' (got {model.attention!r})")
    optim = _build(OptimConfig, raw.pop("optim", None) or {}, "optim")
    optim.betas = tuple(optim.betas)
    _positive(optim.lr, "optim.lr")
    _positive(optim.warmup_steps, "optim.warmup_steps", integer=True, allow_zero=True)
    _positive(optim.weight_decay, "optim.weight_decay", allow_zero=True)
    _positive(optim.grad_clip, "optim.grad_clip", allow_zero=True)
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {optim.betas}")
    ev = _build(EvalConfig, raw.pop("eval", None) or {}, "eval")
    _positive(ev.interval, "eval.interval", integer=True)
    cfg = _build(TrainConfig, {**raw, "model": model, "data": data, "stages": stages, "optim": optim, "eval": ev},
                 "config")
    if cfg.export not in EXPORTS:
        raise ConfigError(f"export must be one of {list(EXPORTS)}, got {cfg.export!r}")
    if cfg.export == "hf_llama" and (model.mlp != "swiglu" or model.attention != "full"):
        raise ConfigError(f"export: hf_llama needs model.mlp 'swiglu' and model.attention 'full' (got "
                          f"{model.mlp!r}, {model.attention!r})")
    _positive(cfg.threads, "threads", integer=True)
    _positive(cfg.log_interval, "log_interval", integer=True)
    _positive(cfg.checkpoint_interval, "checkpoint_interval", integer=True)
    return cfg


def read_yaml(path: str | Path) -> Any:
    """The decoded YAML of a config file; a missing or malformed file (`nats_model.config_files`) is a
    ConfigError naming it in one line."""
    from nats_model.config_files import ConfigFileError, read_config_file

    p = Path(path)
    if not p.is_file() and not p.is_dir():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        return read_config_file(p, json_suffixes=())
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from None  # the command names the file


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config."""
    return parse_config(read_yaml(path))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A JSON-able dict of the config (as saved next to a run)."""
    return dataclasses.asdict(cfg)
