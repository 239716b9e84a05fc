"""Models: what a model name stands for, and loading it with its tokenizer as a `ModelHandle`.

`load_model(name_or_path, device="cpu", dtype="float32", adapter=None) -> ModelHandle` accepts
- a shipped reference model by name: the folder `models/<name>/` of the repository;
- a GPT checkpoint folder (`config.json` with `"model_type": "natsbench-gpt"` or without a
  model type, plus `model.safetensors`), tokenised byte-level;
- a local Hugging Face model folder (AutoModelForCausalLM + AutoTokenizer, local files only);
- a test-only random model: `random:tiny-gpt` (2-layer byte-level GPT, full attention),
  `random:tiny-gpt-nats` (the same with NAtS type scorers, window 16) or `random:tiny-llama`
  (a 2-layer Llama with a small byte-level BPE tokenizer trained in memory, so the Hugging Face
  path with a real tokenizer runs without downloads). Weights come from a fixed seed.
`resolve_model(name)` says which folder a name stands for (None for a `random:` model),
`check_model(name)` checks its files without loading weights (the sweep driver's preflight), and
`check_adapter_for_model(name, adapter_dir)` checks a NAtS scorer adapter against its base before
anything loads. Running a cell on a loaded model is `services.evaluation.run_cell`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.adapters import adapter_fields
from services.declaration import DTYPES, check_device, resolve_device
from services.model_files import check_model_folder
from services.paths import MODELS_DIR

RANDOM_MODELS = ("random:tiny-gpt", "random:tiny-gpt-nats", "random:tiny-llama")


def shipped_models() -> list[str]:
    """Names of the reference models in `models/` (folders with a config.json)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def _tiny_bpe_tokenizer():
    """A byte-level BPE tokenizer (vocabulary ~400) trained in memory on the task formats' text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from nats_model.data import tasks

    corpus = [tasks.DEFAULT_FILLER * 4, tasks.PASSKEY_HEAD, tasks.NIAH_HEAD, tasks.KV_HEAD, tasks.VAR_HEAD,
              "What is the pass key? The pass key is 12345. Remember it.", "The number for K is 67890.",
              "Recall a b c.\nAnswer: a=1 b=2", "What is z? z=q. q=a. a=123."]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def _random_model(name: str):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name in ("random:tiny-gpt", "random:tiny-gpt-nats"):
            from nats_model.models.gpt import GPT, GPTConfig
            from nats_model.tokenizer import ByteTokenizer

            attention = "nats" if name.endswith("-nats") else "full"
            cfg = GPTConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=8192, attention=attention,
                            window=16)
            return GPT(cfg).eval(), ByteTokenizer(), "gpt"
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = _tiny_bpe_tokenizer()
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return LlamaForCausalLM(cfg).eval(), tok, "hf"


def resolve_model(name_or_path: str) -> Path | None:
    """The folder a model name stands for (None for a `random:` test model); ValueError naming
    the name and what is allowed when it resolves to nothing."""
    name = str(name_or_path)
    if name.startswith("random:"):
        if name not in RANDOM_MODELS:
            raise ValueError(f"unknown random test model {name!r}; allowed: {', '.join(RANDOM_MODELS)}")
        return None
    folder = Path(name).expanduser()
    if not folder.is_dir() and (MODELS_DIR / name).is_dir():
        folder = MODELS_DIR / name
    if not folder.is_dir():
        raise ValueError(
            f"model {name!r} not found: not a folder and not a shipped model (shipped: "
            f"{', '.join(shipped_models()) or 'none yet'}); test models: {', '.join(RANDOM_MODELS)}"
        )
    return folder


# ---------------------------------------------------------------- loading

@dataclass
class ModelHandle:
    """A loaded model with its tokenizer: `kind` is "gpt" (the small byte-level GPT) or "hf"
    (a Hugging Face causal LM); `encode`/`decode`/`count_tokens` use the model's own tokenizer,
    so workloads measure `context_length` in the model's tokens."""

    name: str
    model: Any
    tokenizer: Any
    kind: str
    device: str
    dtype: str
    source: str
    info: dict = field(default_factory=dict)
    # NAtS scorer adapter attached at load (`services.adapters`): its folder as given and content hash
    adapter: str | None = None
    adapter_sha256: str | None = None

    def encode(self, text: str) -> list[int]:
        if self.kind == "hf":
            return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        return self.tokenizer.encode(text)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def has_chat_template(self) -> bool:
        return self.kind == "hf" and bool(getattr(self.tokenizer, "chat_template", None))

    def check_chat(self, workload: str) -> None:
        """ValueError when the workload parameter chat='on' cannot be honoured by this model."""
        if not self.has_chat_template():
            raise ValueError(f"workload {workload!r}: parameter 'chat'='on' needs a Hugging Face model whose "
                             f"tokenizer has a chat template; {self.name!r} has none (use chat='off')")

    def encode_instance(self, inst) -> list[int]:
        """The token ids of an instance: its prompt, or with `meta["chat"]` the user turn through
        the chat template (generation prompt added) followed by the assistant prefix."""
        chat = inst.meta.get("chat")
        if chat is None:
            return self.encode(inst.prompt)
        self.check_chat(inst.workload)
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": chat["user"]}],
                                                  add_generation_prompt=True, tokenize=False)
        # the template writes its own special tokens (BOS included); the prefix continues the text
        return list(self.tokenizer(text + chat["assistant_prefix"], add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        if self.kind == "hf":
            eos = self.tokenizer.eos_token_id
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos)]
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids)


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def _check_device(device: str) -> str:
    """The device to load on: "auto" resolved (cuda if torch sees a GPU, else cpu); ValueError
    for an unknown name or a CUDA device on a machine without one."""
    import torch

    device = resolve_device(check_device(device))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available (use --device cpu)")
    return device


def _load_folder(folder: Path, torch_dtype):
    # Config, safetensors headers and restricted .bin unpickling first: one line naming a bad file.
    model_type = check_model_folder(folder).get("model_type")
    if model_type in (None, "natsbench-gpt"):
        from nats_model.models.gpt import GPT
        from nats_model.tokenizer import ByteTokenizer

        try:
            return GPT.from_pretrained(folder, device="cpu", dtype=torch_dtype), ByteTokenizer(), "gpt"
        except (TypeError, ValueError, RuntimeError, KeyError) as exc:  # config fields, state-dict mismatch
            raise ValueError(f"GPT checkpoint folder {str(folder)!r}: config.json and model.safetensors do not "
                             f"make a model: {_first_line(exc)}") from None
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:  # the config first: the tokenizer reads it too, and a bad field must be named as the config's
        AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers' config validation raises its own types
        raise ValueError(f"{folder / 'config.json'} is not a valid Hugging Face config: {_first_line(exc)}") from None
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"Hugging Face model folder {str(folder)!r} has no usable tokenizer: {_first_line(exc)}") \
            from None
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
    except Exception as exc:  # noqa: BLE001 - a bad config.json surfaces as many types (transformers' own included)
        raise ValueError(f"Hugging Face model folder {str(folder)!r} could not be loaded: {_first_line(exc)}") from None
    return model.eval(), tok, "hf"


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, at most 300 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:  # "Error(s) in loading state_dict for GPT:" / "Validation error ...:"
        text = f"{text} {lines[1]}"
    return text if len(text) <= 300 else text[:297] + "..."


def check_model(name_or_path: str) -> None:
    """Resolve a model name and check its files without loading the weights (the sweep driver
    calls this before Ray starts); ValueError with one line naming the name or the bad file."""
    folder = resolve_model(name_or_path)
    if folder is not None:
        check_model_folder(folder)


def load_model(name_or_path: str, device: str = "cpu", dtype: str = "float32",
               adapter: str | None = None) -> ModelHandle:
    """Load a shipped model by name, a GPT checkpoint folder, a local Hugging Face folder or a
    `random:` test model (see the module docstring); ValueError naming what was tried. `adapter`:
    a NAtS scorer adapter folder for a Hugging Face model (`nats_model.adapter`), checked against the
    base (config and weight hash) and attached; the `nats` policy then takes W / chunk size / Global
    bias from it."""
    torch_dtype = _torch_dtype(dtype)
    device = _check_device(device)
    name = str(name_or_path)
    folder = resolve_model(name)
    if folder is None:
        model, tok, kind = _random_model(name)
        source = name
    else:
        model, tok, kind = _load_folder(folder, torch_dtype)
        source = str(folder.resolve())
    model = model.to(device=device, dtype=torch_dtype).eval()
    if kind != "hf" and hasattr(model, "cpu_decode_layout"):
        model.cpu_decode_layout()  # our GPT on the CPU: decode-friendly weight layout (see its docstring)
    info = {"kind": kind, "source": source, "n_parameters": sum(p.numel() for p in model.parameters())}
    from services.model_base import base_model  # the base a dashboard compares this run on

    info["base_model"] = base_model(name, adapter)
    handle = ModelHandle(name=name, model=model, tokenizer=tok, kind=kind, device=device, dtype=dtype,
                         source=source, info=info)
    if adapter is not None:
        if kind != "hf":
            raise ValueError(f"adapter {str(adapter)!r}: NAtS adapters are for Hugging Face models; {name!r} is a "
                             "natsbench GPT (its scorers live in its own checkpoint)")
        attached = _attach_adapter(model, adapter, None if name.startswith("random:") else folder)
        handle.adapter, handle.adapter_sha256 = attached["adapter"], attached["adapter_sha256"]
        info["adapter"] = {"path": attached["adapter"], "sha256": attached["adapter_sha256"], **attached["config"]}
    return handle


# ---------------------------------------------------------------- NAtS scorer adapters

def check_adapter_for_model(model_name: str, adapter_dir: str | os.PathLike):
    """Read the adapter and check it against the base model `model_name` (a Hugging Face folder or
    shipped name: config fields and the weights' sha256; a `random:` test model: config fields) without
    loading the base's weights. Returns its `AdapterConfig`; ValueError naming the file and the first
    mismatch, or why the model cannot take an adapter."""
    from nats_model.adapter import load_adapter

    folder = resolve_model(model_name)
    if folder is None:  # a random test model: build it (tiny) to read its config
        model, _, kind = _random_model(model_name)
        base: Any = model
    else:
        kind = "hf" if _folder_model_type(folder) not in (None, "natsbench-gpt") else "gpt"
        base = folder
    if kind != "hf":
        raise ValueError(f"adapter {str(adapter_dir)!r}: NAtS adapters are for Hugging Face models; {model_name!r} "
                         "is a natsbench GPT (its scorers live in its own checkpoint)")
    cfg, _ = load_adapter(adapter_dir, base)
    return cfg


def _folder_model_type(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _attach_adapter(model: Any, adapter_dir: str | os.PathLike, base_dir: Path | None) -> dict[str, Any]:
    """Attach an adapter's scorers to a loaded model (checked against it, and against `base_dir`'s
    weight hash when the model came from a folder); returns what the handle records about it:
    the config fields and the adapter's config (for `info`), and the scorers (kept alive)."""
    from nats_model.adapter import attach_adapter

    cfg, scorers = attach_adapter(model, adapter_dir, base_dir)
    return {**adapter_fields(adapter_dir), "config": cfg.to_json(), "scorers": scorers}
