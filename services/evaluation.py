"""Run one benchmark cell: load a model, make the workload's instances, run them through a KV
policy with the shared engine (`nats_model.engine.generation`), score and measure.

`load_model(name_or_path, device="cpu", dtype="float32") -> ModelHandle` accepts
- a shipped reference model by name: the folder `models/<name>/` of the repository;
- a GPT checkpoint folder (`config.json` with `"model_type": "natsbench-gpt"` or without a
  model type, plus `model.safetensors`), tokenised byte-level;
- a local Hugging Face model folder (AutoModelForCausalLM + AutoTokenizer, local files only);
- a test-only random model: `random:tiny-gpt` (2-layer byte-level GPT, full attention),
  `random:tiny-gpt-nats` (the same with NAtS type scorers, window 16) or `random:tiny-llama`
  (a 2-layer Llama with a small byte-level BPE tokenizer trained in memory, so the Hugging Face
  path with a real tokenizer runs without downloads). Weights come from a fixed seed.

`run_cell(handle, config) -> record` never raises for a failure inside the cell: the record
then has `status="failed"` and `error="<ExceptionType>: <message>"` (bad policy or workload
parameters give the ValueError's message), with the traceback in `extras.traceback`.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.declaration import (
    CONFIG_KEYS,
    DONE,
    DTYPES,
    FAILED,
    METRIC_FIELDS,
    check_compress,
    check_config_field,
    check_device,
    resolve_device,
)
from services.model_files import check_model_folder
from services.models import (  # noqa: F401 - re-exported: model names and test models live in services.models
    MODELS_DIR,
    RANDOM_MODELS,
    REPO_ROOT,
    _random_model,
    _tiny_bpe_tokenizer,
    resolve_model,
    shipped_models,
)

CONFIG_DEFAULTS: dict[str, Any] = {"policy_params": {}, "workload_params": {}, "n_examples": 1, "seed": 0}
RECORD_KEYS = CONFIG_KEYS
WARMUP_PROMPT_TOKENS = 64


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


# ---------------------------------------------------------------- loading

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
        from services.adapters import attach_to_model

        if kind != "hf":
            raise ValueError(f"adapter {str(adapter)!r}: NAtS adapters are for Hugging Face models; {name!r} is a "
                             "natsbench GPT (its scorers live in its own checkpoint)")
        attached = attach_to_model(model, adapter, None if name.startswith("random:") else folder)
        handle.adapter, handle.adapter_sha256 = attached["adapter"], attached["adapter_sha256"]
        info["adapter"] = {"path": attached["adapter"], "sha256": attached["adapter_sha256"], **attached["config"]}
    return handle


# ---------------------------------------------------------------- environment

@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    env = os.environ.get("NATSBENCH_GIT_COMMIT")
    if env:
        return env
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict:
    from importlib import metadata

    versions = {}
    for pkg in ("natsbench", "torch", "transformers", "numpy", "triton"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def environment_info(device: str = "cpu") -> dict:
    """Where and with what a cell ran: git commit (`-dirty` with local changes; env
    NATSBENCH_GIT_COMMIT overrides, e.g. inside a Ray job without .git), package versions,
    device name, host, CPU threads."""
    import torch

    versions = dict(_package_versions())
    if str(device).startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = _cpu_name()
    return {"git_commit": _git_commit(), "python": platform.python_version(), "packages": versions,
            "device": str(device), "device_name": device_name, "host": socket.gethostname(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


# ---------------------------------------------------------------- one cell

def normalize_config(config: dict, handle: ModelHandle | None = None) -> dict:
    """The cell config with defaults filled in; ValueError naming a missing or bad field."""
    if not isinstance(config, dict):
        raise ValueError(f"a cell config must be a dict, got {type(config).__name__}")
    cfg = {**CONFIG_DEFAULTS, **config}
    if handle is not None:
        cfg.setdefault("model", handle.name)
        cfg.setdefault("device", handle.device)
        cfg.setdefault("dtype", handle.dtype)
    for key in CONFIG_KEYS:  # types, ranges, devices, dtypes: services.declaration
        cfg[key] = check_config_field(key, cfg.get(key), f"cell config field {key!r}")
    # the compression protocol: absent = the policy's default (the run key hashes it only when it differs)
    cfg["compress"] = check_compress(cfg["policy"], cfg.get("compress"), "cell config field 'compress'")
    # "auto" is kept in the config (and its run key); the model was loaded on what it resolved to
    if handle is not None and (resolve_device(cfg["device"]), cfg["dtype"]) != (handle.device, handle.dtype):
        raise ValueError(f"cell asks for device={cfg['device']!r} dtype={cfg['dtype']!r} but the model was "
                         f"loaded on device={handle.device!r} dtype={handle.dtype!r}")
    if handle is not None:
        from services.adapters import check_config_matches

        check_config_matches(cfg, handle.adapter, handle.adapter_sha256)
        if handle.adapter is not None:
            cfg["adapter_sha256"] = handle.adapter_sha256
        _fill_model_sha256(cfg, handle)
    return cfg


def _fill_model_sha256(cfg: dict, handle: ModelHandle) -> None:
    """`model_sha256` of a folder model (services.model_hash): checked against the loaded folder's
    weights when the planner set it (ValueError: the folder changed since), filled in otherwise."""
    from services.model_hash import model_sha256

    if "model_sha256" not in handle.info:
        handle.info["model_sha256"] = None if handle.source.startswith("random:") else model_sha256(handle.source)
    loaded = handle.info["model_sha256"]
    if cfg.get("model_sha256") not in (None, loaded):
        raise ValueError(f"cell config model_sha256 {str(cfg['model_sha256'])[:12]}... does not match the weights "
                         f"of the model folder {handle.source!r} ({str(loaded)[:12]}...): the folder changed after "
                         "the cell was planned; plan the sweep again")
    if loaded is not None:
        cfg["model_sha256"] = loaded


def _config_keys(cfg: dict) -> tuple[str, ...]:
    """The config fields a record carries and the run key hashes: the adapter's only when it has one
    (cells without an adapter keep their keys), the model's weights hash for a folder model."""
    from services.adapters import ADAPTER_KEYS
    from services.model_hash import MODEL_KEYS

    return RECORD_KEYS + ("compress",) + tuple(k for k in (*ADAPTER_KEYS, *MODEL_KEYS) if cfg.get(k) is not None)


def build_policy(name: str, params: dict):
    """A fresh policy from `nats_model.policies` (ValueError for an unknown name or parameter)."""
    from nats_model import policies

    allowed = policies.available()
    if name not in allowed:
        raise ValueError(f"unknown policy {name!r}; allowed: {', '.join(allowed)}")
    return policies.build(name, **params)


def _run_key(cfg: dict) -> str:
    from services.store import run_key

    return run_key({k: cfg[k] for k in _config_keys(cfg)})


def _new_record(config: Any) -> dict:
    base = config if isinstance(config, dict) else {}
    record = {k: base.get(k, CONFIG_DEFAULTS.get(k)) for k in _config_keys(base)}
    record.update(run_key=base.get("run_key"), sweep=base.get("sweep"), status=FAILED, error=None,
                  attempts=base.get("attempts", 1), environment={}, **dict.fromkeys(METRIC_FIELDS),
                  n_examples=base.get("n_examples"), extras={})
    return record


def encode_split(handle: ModelHandle, inst) -> tuple[list[int], int]:
    """(token ids of the instance as `ModelHandle.encode_instance` makes them, how many of them are its
    context): the longest prefix of the ids that the context's text alone encodes to (a token that
    straddles the boundary counts as the question's), the chat template's opening included with
    `meta["chat"]`. ValueError when the instance has no split or no question token follows."""
    ids = handle.encode_instance(inst)
    n_chars = getattr(inst, "context_chars", None)
    if n_chars is None:
        raise ValueError(f"compress: workload {inst.workload!r} gives no context/question split; allowed: "
                         "streaming, prompt")
    chat = inst.meta.get("chat")
    if chat is None:
        context = handle.encode(inst.prompt[:n_chars])
    else:
        text = handle.tokenizer.apply_chat_template([{"role": "user", "content": chat["user"]}],
                                                    add_generation_prompt=True, tokenize=False)
        start = text.find(chat["user"])
        if start < 0:
            raise ValueError(f"compress: the chat template of {handle.name!r} does not hold the user turn verbatim: "
                             "cannot find where the context ends; allowed: streaming, prompt")
        cut = text[: start + min(n_chars, len(chat["user"]))]
        context = list(handle.tokenizer(cut, add_special_tokens=False)["input_ids"])
    n = 0
    while n < min(len(context), len(ids)) and context[n] == ids[n]:
        n += 1
    if not 0 < n < len(ids):
        raise ValueError(f"compress='context': instance {inst.id!r} has {n} context tokens of {len(ids)}; "
                         "a context and a question after it are needed")
    return ids, n


def _run_generate(handle: ModelHandle, workload, instances, make_policy, metrics,
                  compress: str | None = None) -> None:
    import torch

    from nats_model.engine.generation import generate

    device = handle.device
    first = handle.encode(instances[0].prompt)[:WARMUP_PROMPT_TOKENS]
    generate(handle.model, torch.tensor([first], device=device), make_policy(), max_new_tokens=2)  # warm-up
    metrics.start()
    for inst in instances:
        if compress == "context":
            ids, context_len = encode_split(handle, inst)
        else:
            ids, context_len = handle.encode_instance(inst), None
        result = generate(handle.model, torch.tensor([ids], device=device), make_policy(),
                          max_new_tokens=inst.max_new_tokens, compress=compress, context_len=context_len)
        tokens = result.tokens[0].tolist()  # (max_new_tokens,)
        prediction = handle.decode(tokens)
        metrics.add_generation(inst, result, prediction, workload.score(prediction, inst), len(ids), len(tokens))


def _run_nll(handle: ModelHandle, instances, make_policy, metrics, compress: str | None = None) -> None:
    import torch

    from nats_model.engine.generation import score_run
    from services.metrics import device_sync

    device = handle.device
    first = handle.encode(instances[0].prompt)[:WARMUP_PROMPT_TOKENS]
    score_run(handle.model, torch.tensor([first], device=device), make_policy())  # warm-up
    metrics.start()
    for inst in instances:
        ids = handle.encode(inst.prompt)[: inst.meta["max_tokens"]]
        device_sync(device)
        t0 = time.perf_counter()
        out = score_run(handle.model, torch.tensor([ids], device=device), make_policy(),
                        prefill_chunk_size=inst.meta.get("chunk_size", 1),
                        prompt_len=inst.meta.get("prompt_tokens", 0), compress=compress)
        device_sync(device)
        elapsed = time.perf_counter() - t0
        metrics.add_nll(inst, out.nll, elapsed, stats=out)


def run_cell(handle: ModelHandle, config: dict) -> dict:
    """Run one cell and return its run record (docs/DESIGN.md); never raises for a failure
    inside the cell (status "failed", `error` "<Type>: <message>", traceback in extras)."""
    import torch

    from services import workloads
    from services.metrics import CellMetrics, json_safe

    record = _new_record(config)
    try:
        record["environment"] = environment_info(getattr(handle, "device", "cpu"))
        cfg = normalize_config(config, handle)
        record.update({k: cfg[k] for k in _config_keys(cfg)})
        record["run_key"] = record["run_key"] or _run_key(cfg)
        workload = workloads.get(cfg["workload"])
        if cfg["compress"] == "context" and not getattr(workload, "context_split", True):
            raise ValueError(f"cell config field 'compress': workload {cfg['workload']!r} has no question after "
                             "its context; allowed: streaming, prompt")
        wparams = workload.validate(cfg["workload_params"])
        if wparams.get("chat") == "on":
            handle.check_chat(cfg["workload"])  # before any work
        build_policy(cfg["policy"], cfg["policy_params"])  # a bad name or parameter fails here, before work

        def make_policy():
            return build_policy(cfg["policy"], cfg["policy_params"])

        instances = workload.instances(wparams, cfg["n_examples"], cfg["seed"], count_tokens=handle.count_tokens)
        metrics = CellMetrics(device=handle.device)
        kind = instances[0].kind
        torch.manual_seed(cfg["seed"])
        with torch.no_grad():
            if kind == "nll":
                _run_nll(handle, instances, make_policy, metrics, cfg["compress"])
            else:
                _run_generate(handle, workload, instances, make_policy, metrics, cfg["compress"])
        fields, extras = metrics.summary(kind)
        record.update(fields)
        record["extras"] = {"workload_params_resolved": wparams, "model_info": handle.info,
                            "metric": workload.metric, **extras}
        record["status"], record["error"] = DONE, None
    except Exception as exc:  # noqa: BLE001 - a cell reports its failure, it never raises
        record["status"] = FAILED
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["extras"] = {**record.get("extras", {}), "traceback": traceback.format_exc(limit=20)[-8000:]}
        if str(getattr(handle, "device", "cpu")).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()  # e.g. after an out-of-memory error, so the next cell starts clean
    return json_safe(record)

