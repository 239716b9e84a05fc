"""KV-cache policies: one file each, one interface (`nats_model.policies.base.Policy`).

The registry is discovered: every module of this package (except `base`) that defines a
`Policy` subclass with a non-empty `name` is listed by `available()`. Adding a policy means
adding one file, nothing here.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from nats_model.policies.base import Policy, Step

__all__ = ["Policy", "Step", "available", "build", "policy_class"]

_REGISTRY: dict[str, type[Policy]] = {}


def _discover() -> dict[str, type[Policy]]:
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            if info.name == "base" or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, Policy) and obj.name and obj.__module__ == module.__name__:
                    _REGISTRY[obj.name] = obj
    return _REGISTRY


def available() -> list[str]:
    """Sorted names of every registered policy."""
    return sorted(_discover())


def policy_class(name: str) -> type[Policy]:
    reg = _discover()
    if name not in reg:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(sorted(reg))}")
    return reg[name]


def build(name: str, **params) -> Policy:
    """Validate `params` against the policy's fields and build it; ValueError names the bad input."""
    cls = policy_class(name)
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in params:
        if key not in allowed:
            raise ValueError(f"policy {name!r} has no parameter {key!r}; allowed: {', '.join(allowed)}")
    return cls(**params)
