"""The fine-tuning configuration (`natsbench finetune`): YAML validated into dataclasses.

Example (see `configs/finetune_tiny_nats.yaml`):

    base: models/tiny-base                      # full-attention checkpoint folder (frozen); or --model
    nats: {window: 64, lam: 1.0e-6, global_bias: 0.0, init_logits: [-2.0, -1.0, 1.0]}
    loss: logits_kl                             # hidden_mse | logits_kl | both
    data: {text_weight: 0.1, tasks: {passkey: {weight: 1.0}}}    # as in the train config
    stages: [{seq_len: 512, steps: 100, batch_size: 4}, {seq_len: 1024, steps: 200, batch_size: 2}]
    optim: {lr: 2.0e-3, warmup_fraction: 0.1, min_lr_ratio: 0.1}

The data mix and the stages use the same dataclasses (and validation) as `natsbench train`.
A Hugging Face base (`natsbench finetune --model DIR`) may add `local_data` (jsonl/parquet files in
kvpress or LongBench columns, each with a mix weight) and `gradient_checkpointing: true`; window and
lambda left out of `nats` take the model family's defaults (`NATS_DEFAULTS`: the paper's W = 256,
lambda = 3e-7 for Hugging Face LLMs; W = 64, lambda = 1e-6 for the tiny byte-level GPT).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats_model.train.config import ConfigError, DataConfig, Stage, _build, _positive, parse_config, read_yaml

LOSS_KINDS = ("hidden_mse", "logits_kl", "both")
# window / lambda when the config leaves them out, per model family
NATS_DEFAULTS = {"gpt": {"window": 64, "lam": 1e-6}, "hf": {"window": 256, "lam": 3e-7}}


@dataclass
class NatsSettings:
    """The NAtS attention of the student: window W, regulariser lambda, inference Global bias,
    optional chunk size, and the scorer initialisation.

    `init_logits` [G, L, S] (or None = the model's random init) sets the mean type logits the
    scorers start from: the scorer has no bias, so each type's weight row gets `logit * u / |u|^2`
    added, with u the mean scorer input over a calibration batch (then the mean input scores
    exactly those logits). A low Global logit makes Global unlikely at first.
    """

    window: int | None = None  # None: NATS_DEFAULTS of the model family
    lam: float | None = None
    global_bias: float = 0.1
    chunk_size: int | None = None
    init_logits: list[float] | None = None
    init_adapter: str | None = None

    def with_defaults(self, family: str) -> NatsSettings:
        """A copy with window / lam filled from `NATS_DEFAULTS[family]` ("gpt" or "hf") where unset."""
        defaults = NATS_DEFAULTS[family]
        return dataclasses.replace(self, window=defaults["window"] if self.window is None else self.window,
                                   lam=defaults["lam"] if self.lam is None else self.lam)


@dataclass
class LocalData:
    """A local jsonl / parquet file in the data mix (Hugging Face bases only): kvpress columns
    (`context`, `question`, `answer_prefix`, `answer`) or LongBench columns (`context`, `input`,
    `answers`); `weight` is its share of the rows, like a task's."""

    path: str
    weight: float = 1.0


@dataclass
class FinetuneOptim:
    """AdamW on the scorer weights with the paper's linear schedule: lr rises from
    `min_lr_ratio * lr` to `lr` over the first `warmup_fraction` of the steps, then falls back
    linearly to `min_lr_ratio * lr` at the last step."""

    lr: float = 2e-3
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 0.0


@dataclass
class FinetuneEval:
    """Periodic validation of the student (inference types): teacher-forced answer exact match
    per task and the kept fraction, on `examples_per_task` examples of `seq_len` tokens."""

    interval: int = 100
    seq_len: int | None = None  # default: the last stage's seq_len
    batch_size: int = 8
    examples_per_task: int = 16
    text_batches: int = 0


@dataclass
class FinetuneConfig:
    """Everything `natsbench finetune` needs: base checkpoint, NAtS settings, distillation loss
    (`hidden_mse` = MSE of the final-norm hidden states, `logits_kl` = KL(teacher || student) of
    the next-token distributions, `both` = their sum with `kl_weight` on the KL), loss positions
    (answer tokens of task rows; every position of text rows when `text_all_positions`), data mix,
    stages, optimizer and validation."""

    nats: NatsSettings
    data: DataConfig
    stages: list[Stage]
    base: str | None = None  # GPT checkpoint folder; a Hugging Face base comes from --model
    local_data: list[LocalData] = field(default_factory=list)
    gradient_checkpointing: bool = False
    loss: str = "hidden_mse"
    kl_weight: float = 1.0
    text_all_positions: bool = True
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    eval: FinetuneEval = field(default_factory=FinetuneEval)
    seed: int = 0
    threads: int = 2
    log_interval: int = 10
    checkpoint_interval: int = 50
    time_limit_s: float | None = None

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


def _mix_is_empty(data_raw: Any) -> bool:
    """True when a raw `data` section gives text and every task weight 0 (anything malformed: False,
    the shared parser then names the field)."""
    if not isinstance(data_raw, dict) or not isinstance(data_raw.get("tasks") or {}, dict):
        return False
    weights = [data_raw.get("text_weight", 0.2)]
    weights += [(spec or {}).get("weight", 1.0) if isinstance(spec, dict | None) else 1.0
                for spec in (data_raw.get("tasks") or {}).values()]
    return all(isinstance(w, int | float) and not isinstance(w, bool) and w == 0 for w in weights)


def parse_finetune_config(raw: dict[str, Any]) -> FinetuneConfig:
    """Validate a loaded YAML mapping into a `FinetuneConfig` (errors name the bad field)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping, got {type(raw).__name__}")
    for key in ("data", "stages"):
        if key not in raw:
            raise ConfigError(f"missing required field {key!r}")
    raw = dict(raw)
    base = raw.pop("base", None)
    if base is not None and (not isinstance(base, str) or not base):
        raise ConfigError(f"base must be a checkpoint folder path (or left out with --model), got {base!r}")
    # data + stages: validated by the from-scratch trainer's parser (the model section is a dummy)
    data_raw = raw.pop("data")
    only_local = bool(raw.get("local_data")) and _mix_is_empty(data_raw)
    if only_local:  # the mix is the local files alone: the shared parser wants some weight, text's is restored
        data_raw = {**data_raw, "text_weight": 1.0}
    shared = parse_config({"model": {}, "data": data_raw, "stages": raw.pop("stages")})
    if only_local:
        shared.data.text_weight = 0.0
    nats = _build(NatsSettings, raw.pop("nats", None) or {}, "nats")
    if nats.window is not None and (isinstance(nats.window, bool) or not isinstance(nats.window, int)
                                    or nats.window < 0):
        raise ConfigError(f"nats.window must be an integer >= 0 (or left out for the model's default), "
                          f"got {nats.window!r}")
    if nats.lam is not None:
        _positive(nats.lam, "nats.lam", allow_zero=True)
    if nats.chunk_size is not None and (isinstance(nats.chunk_size, bool) or not isinstance(nats.chunk_size, int)
                                        or nats.chunk_size < 1):
        raise ConfigError(f"nats.chunk_size must be null or an integer >= 1, got {nats.chunk_size!r}")
    if nats.init_logits is not None and (not isinstance(nats.init_logits, list | tuple) or len(nats.init_logits) != 3):
        raise ConfigError(f"nats.init_logits must be null or three numbers [G, L, S], got {nats.init_logits!r}")
    if nats.init_adapter is not None:
        if not isinstance(nats.init_adapter, str) or not nats.init_adapter:
            raise ConfigError(f"nats.init_adapter must be null or an adapter folder path, got {nats.init_adapter!r}")
        if nats.init_logits is not None:
            raise ConfigError("nats.init_adapter and nats.init_logits both given: the scorers start from one of them")
    optim = _build(FinetuneOptim, raw.pop("optim", None) or {}, "optim")
    optim.betas = tuple(optim.betas)
    _positive(optim.lr, "optim.lr")
    if not 0 <= optim.warmup_fraction < 1:
        raise ConfigError(f"optim.warmup_fraction must be in [0, 1), got {optim.warmup_fraction}")
    if not 0 < optim.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio must be in (0, 1], got {optim.min_lr_ratio}")
    _positive(optim.weight_decay, "optim.weight_decay", allow_zero=True)
    _positive(optim.grad_clip, "optim.grad_clip", allow_zero=True)
    local_raw = raw.pop("local_data", None) or []
    if not isinstance(local_raw, list):
        raise ConfigError(f"local_data must be a list of {{path, weight}} mappings, got {type(local_raw).__name__}")
    local = [_build(LocalData, item, f"local_data[{i}]") for i, item in enumerate(local_raw)]
    for i, item in enumerate(local):
        if not isinstance(item.path, str) or not item.path.lower().endswith((".jsonl", ".json", ".parquet")):
            raise ConfigError(f"local_data[{i}].path must be a .jsonl or .parquet file, got {item.path!r}")
        _positive(item.weight, f"local_data[{i}].weight")
    if not isinstance(raw.get("gradient_checkpointing", False), bool):
        raise ConfigError(f"gradient_checkpointing must be true or false, got {raw['gradient_checkpointing']!r}")
    ev = _build(FinetuneEval, raw.pop("eval", None) or {}, "eval")
    _positive(ev.interval, "eval.interval", integer=True)
    cfg = _build(FinetuneConfig, {**raw, "base": base, "nats": nats, "data": shared.data, "stages": shared.stages,
                                  "optim": optim, "eval": ev, "local_data": local}, "config")
    if cfg.loss not in LOSS_KINDS:
        raise ConfigError(f"loss must be one of {LOSS_KINDS}, got {cfg.loss!r}")
    _positive(cfg.kl_weight, "kl_weight", allow_zero=True)
    for name in ("threads", "log_interval", "checkpoint_interval"):
        _positive(getattr(cfg, name), name, integer=True)
    return cfg


def load_finetune_config(path: str | Path) -> FinetuneConfig:
    """Read and validate a YAML fine-tuning config."""
    return parse_finetune_config(read_yaml(path))


def finetune_config_to_dict(cfg: FinetuneConfig) -> dict[str, Any]:
    """A JSON-able dict of the config (as saved next to a run)."""
    return dataclasses.asdict(cfg)
