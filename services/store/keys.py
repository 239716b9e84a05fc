"""Run keys: the stable identity of one benchmark cell.

A cell is identified by the sha256 of the canonical JSON of its config (sorted keys, no
whitespace) together with `CODE_VERSION`, so the same cell always maps to the same row and
a retry can never create a second one. Bump `CODE_VERSION` whenever a code change would
change the measured results of an unchanged config: every cell then gets a new key and is
measured again instead of being skipped as done.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from services.declaration import CONFIG_KEYS as _CONFIG_KEYS
from services.declaration import key_config

# Bump when results of an unchanged config would change (new decode loop, metric fix, ...).
CODE_VERSION = "3"

# The keys of a cell config (services.declaration); every one must be present in a config.
CONFIG_KEYS: tuple[str, ...] = _CONFIG_KEYS


def _check_json_value(value: Any, path: str) -> None:
    """Reject values whose JSON form is not canonical (NaN, inf, non-string keys, objects)."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cell config value {path} = {value!r} is not a finite number")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json_value(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"cell config key {key!r} under {path} must be a string")
            _check_json_value(item, f"{path}.{key}")
        return
    raise ValueError(
        f"cell config value {path} has type {type(value).__name__}; "
        "allowed: None, bool, int, float, str, list, dict"
    )


def canonical_json(value: Any) -> str:
    """JSON text with sorted keys and no whitespace: equal configs give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def run_key(config: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a cell config plus `CODE_VERSION`.

    Every key of the config takes part (so a new config key can never make two different
    cells collide), except `compress` when it is the policy's default protocol
    (`services.declaration.key_config`: a cell keeps the key it had before the field existed); all
    of `CONFIG_KEYS` must be present.
    """
    if not isinstance(config, dict):
        raise TypeError(f"run_key needs a cell config dict, got {type(config).__name__}")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"cell config lacks {missing}; a config has the keys {list(CONFIG_KEYS)}")
    _check_json_value(config, "config")
    payload = canonical_json({"code_version": CODE_VERSION, "config": key_config(config)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
