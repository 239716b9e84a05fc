"""Run one benchmark cell on a loaded model: make the workload's instances, run them through a KV
policy with the shared engine (`nats_model.engine.generation`), score and measure.

`run_cell(handle, config) -> record` never raises for a failure inside the cell: the record
then has `status="failed"` and `error="<ExceptionType>: <message>"` (bad policy or workload
parameters give the ValueError's message), with the traceback in `extras.traceback`.

This module is the default cell runner of the workers (`services.worker.DEFAULT_RUNNER`): a runner
module offers `load_model` and `run_cell` (and optionally `check_model`); this one's `load_model` /
`check_model` are those of `services.models`, where models are named and loaded.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from services import models
from services.declaration import (
    CONFIG_KEYS,
    DONE,
    FAILED,
    METRIC_FIELDS,
    check_compress,
    check_config_field,
    resolve_device,
)
from services.environment import environment_info
from services.models import ModelHandle

CONFIG_DEFAULTS: dict[str, Any] = {"policy_params": {}, "workload_params": {}, "n_examples": 1, "seed": 0}
RECORD_KEYS = CONFIG_KEYS
WARMUP_PROMPT_TOKENS = 64


# the cell runner's loader and model check (the worker contract, `services.worker`): the models'
# own, looked up at call time (a test that swaps `services.models.load_model` swaps the runner's too)
def load_model(name_or_path: str, device: str = "cpu", dtype: str = "float32",
               adapter: str | None = None) -> ModelHandle:
    """`services.models.load_model` (see there)."""
    return models.load_model(name_or_path, device=device, dtype=dtype, adapter=adapter)


def check_model(name_or_path: str) -> None:
    """`services.models.check_model` (see there)."""
    models.check_model(name_or_path)


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

