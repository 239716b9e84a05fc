"""The inference engine: the KV engine a model's attention layers call (`kv_engine`), the
memory-true cache, the attention over the kept tokens and the generate / score loops.

- `kv_engine`: `KVEngine` (the `kv_engine` of the model contract), `attend_store` (attention over
  every segment's kept slots under masks);
- `cache`: `KVCache` / `LayerStore`, the memory-true per (layer, sequence, KV head) storage;
- `prefill_attention` / `decode_attention`: the mask-free fused paths `KVEngine.attend` takes when
  their preconditions hold (same results as `attend_store`);
- `results`: `CacheStats`, `GenerationResult`, `ScoreResult`;
- `generation`: `generate`, `score_run`, `score`, the prefill / decode loops and the compression
  protocol helpers.

The public names below are loaded on first use (PEP 562), so importing a submodule (the policies
import `nats_model.engine.cache`) does not import the engine, which imports the policies' base.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "KVEngine": "kv_engine", "attend_store": "kv_engine",
    "KVCache": "cache", "LayerStore": "cache",
    "CacheStats": "results", "GenerationResult": "results", "ScoreResult": "results",
    "generate": "generation", "score": "generation", "score_run": "generation",
    "check_protocol": "generation", "decode_evicts": "generation", "prefill_steps": "generation",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
