"""The shared workloads and their registry.

`available()` lists the names, `get(name)` returns the workload (ValueError naming the allowed
names otherwise), `instances(name, params, n, seed, count_tokens=None)` makes the instances and
`describe()` lists every workload with its parameters and defaults (`natsbench workloads`).
Every workload is deterministic given (params, seed); every instance has an id and a content
hash; each workload scores its own instances (`Workload.score`).
"""

from __future__ import annotations

from .base import CountTokens, Instance, Param, Workload
from .kv_recall import KvRecall
from .lm_text import LmText
from .local_dataset import LocalDataset
from .niah_multikey import NiahMultikey
from .passkey import Passkey
from .variable_tracking import VariableTracking

REGISTRY: dict[str, Workload] = {
    w.name: w
    for w in (Passkey(), NiahMultikey(), KvRecall(), VariableTracking(), LmText(), LocalDataset())
}


def available() -> list[str]:
    """Names of the registered workloads, in listing order."""
    return list(REGISTRY)


def get(name: str) -> Workload:
    """The workload called `name`; ValueError naming the allowed names otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown workload {name!r}; allowed: {', '.join(REGISTRY)}") from None


def instances(name: str, params: dict | None, n: int, seed: int,
              count_tokens: CountTokens | None = None) -> list[Instance]:
    """The n instances of workload `name` for (params, seed)."""
    return get(name).instances(params, n, seed, count_tokens)


def describe() -> list[dict]:
    """Every workload with its description, metric and parameters (name, type, default, allowed, help)."""
    return [w.describe() for w in REGISTRY.values()]


__all__ = ["CountTokens", "Instance", "Param", "Workload", "REGISTRY", "available", "get", "instances",
           "describe"]
