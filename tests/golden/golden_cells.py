"""The golden cells: a fixed small set of benchmark cells whose exact outputs are committed.

Every policy x two workloads (`passkey`: greedy generation; `lm_text`: streaming NLL with a
prompt, so prompt-compressing policies act) on the tiny random models and the shipped models,
with a few short examples each. What is kept per cell is what the code computes, never how
fast: status and error, accuracy, KV bytes and kept fraction, and per example the greedy token
ids, the prediction, the score, the NLL and the tokens held per (layer, KV head) at the end.
`tests/golden/golden_outputs.json` holds them with the `CODE_VERSION` that produced them;
`tests/golden/test_golden.py` recomputes and compares, `scripts/regen_golden.py` rewrites it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

GOLDEN_FILE = Path(__file__).with_name("golden_outputs.json")
REGEN_COMMAND = ".venv/bin/python scripts/regen_golden.py"

MODELS = ("random:tiny-gpt", "random:tiny-gpt-nats", "random:tiny-llama", "tiny-base", "tiny-nats-ft")
# nats needs a model with NAtS type scorers; the other policies run on every model.
NATS_MODELS = ("random:tiny-gpt-nats", "tiny-nats-ft")
POLICIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("full", {}),
    ("streaming_llm", {"budget": 0.3}),
    ("h2o", {"budget": 0.3}),
    ("snapkv", {"budget": 0.3}),
    ("tova", {"budget": 0.3}),
    ("knorm", {"budget": 0.3}),
    ("expected_attention", {"budget": 0.3}),
    ("pyramidkv", {"budget": 0.3}),
    ("adakv", {"budget": 0.3}),
    ("nats", {}),
)
WORKLOADS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("passkey", {"context_length": 192}),
    ("lm_text", {"context_length": 160, "chunk_size": 8, "prompt_tokens": 32}),
)
N_EXAMPLES = 2
SEED = 0

# Absolute tolerances of the float outputs. NLL is a float32 sum whose last bits move with the
# kernel that computes it (fused vs. plain attention); a real change of the method moves it by
# far more than 1e-4 nats. kept_fraction follows from the exact kept counts (compared exactly).
NLL_ATOL = 1e-4
FRACTION_ATOL = 1e-9


def cell_configs() -> list[dict[str, Any]]:
    """The golden cell configs, model-major (one model load per model)."""
    configs = []
    for model in MODELS:
        for policy, params in POLICIES:
            if policy == "nats" and model not in NATS_MODELS:
                continue
            for workload, wparams in WORKLOADS:
                configs.append({"model": model, "policy": policy, "policy_params": dict(params),
                                "workload": workload, "workload_params": dict(wparams),
                                "n_examples": N_EXAMPLES, "seed": SEED, "device": "cpu", "dtype": "float32"})
    return configs


def label(config: dict[str, Any]) -> str:
    return f"{config['model']} | {config['policy']} | {config['workload']}"


def outcome(record: dict[str, Any]) -> dict[str, Any]:
    """The deterministic part of a run record (no timings, no memory peaks, no environment)."""
    extras = record.get("extras") or {}
    examples = []
    for e in extras.get("examples") or []:
        examples.append({k: e.get(k) for k in ("id", "content_hash", "tokens", "prediction", "score", "nll",
                                               "scored_tokens", "kept_per_layer_head")
                         if k in e})
    return {"status": record["status"], "error": record["error"], "accuracy": record["accuracy"],
            "kv_bytes_physical": record["kv_bytes_physical"], "kv_bytes_full": record["kv_bytes_full"],
            "kept_fraction": record["kept_fraction"], "nll": extras.get("nll"), "examples": examples}


def compute() -> dict[str, dict[str, Any]]:
    """Run every golden cell (one CPU thread, so the float sums are reproducible) -> {label: outcome}."""
    import torch

    from services.evaluation import run_cell
    from services.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, dict[str, Any]] = {}
        handle = None
        for config in cell_configs():
            if handle is None or handle.name != config["model"]:
                handle = None  # free the previous model first
                handle = load_model(config["model"], device="cpu", dtype="float32")
            out[label(config)] = outcome(run_cell(handle, config))
        return out
    finally:
        torch.set_num_threads(threads)


def _diff(path: str, want: Any, got: Any, problems: list[str]) -> None:
    """Exact for ints, strings, token lists and counts; float tolerance only for NLL values."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got)):
            if key not in got:
                problems.append(f"{path}.{key}: missing now (was {want[key]!r})")
            elif key not in want:
                problems.append(f"{path}.{key}: new field {got[key]!r}")
            else:
                _diff(f"{path}.{key}", want[key], got[key], problems)
        return
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            problems.append(f"{path}: length {len(got)}, was {len(want)}: {_short(got)} vs {_short(want)}")
            return
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            _diff(f"{path}[{i}]", a, b, problems)
        return
    leaf = path.rsplit(".", 1)[-1]
    both_float = isinstance(want, float) and isinstance(got, float | int) and not isinstance(got, bool)
    if both_float and leaf in ("nll", "score") and "lm_text" in path:
        if not math.isclose(want, got, rel_tol=0.0, abs_tol=NLL_ATOL):
            problems.append(f"{path}: {got!r}, was {want!r} (tolerance {NLL_ATOL})")
        return
    if both_float and leaf == "kept_fraction":
        if not math.isclose(want, got, rel_tol=0.0, abs_tol=FRACTION_ATOL):
            problems.append(f"{path}: {got!r}, was {want!r}")
        return
    if type(want) is not type(got) or want != got:
        problems.append(f"{path}: {_short(got)}, was {_short(want)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def compare(expected: dict[str, dict[str, Any]], actual: dict[str, dict[str, Any]]) -> list[str]:
    """One line per difference between two {label: outcome} maps (empty: identical)."""
    problems: list[str] = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: cell no longer in the golden set")
        elif name not in expected:
            problems.append(f"{name}: cell not in the golden file")
        else:
            _diff(name, expected[name], actual[name], problems)
    return problems


def load() -> dict[str, Any]:
    """The committed golden file: {"code_version": str, "cells": {label: outcome}}."""
    return json.loads(GOLDEN_FILE.read_text())


def write(code_version: str, cells: dict[str, dict[str, Any]]) -> None:
    text = json.dumps({"code_version": code_version, "cells": cells}, indent=1, sort_keys=True)
    GOLDEN_FILE.write_text(text + "\n")
