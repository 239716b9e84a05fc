"""NAtS scorer adapters in benchmark cells: which config fields name them (`adapter_fields`) and the
check that a cell's fields name what the loaded model carries (`check_config_matches`). The check of
an adapter against its base model before anything runs, and attaching it at load, are model loading:
`services.models.check_adapter_for_model` / `load_model(..., adapter=DIR)`.

A cell that uses an adapter carries two extra config fields (absent otherwise, so cells without
an adapter keep their run keys): `adapter` (the folder as given) and `adapter_sha256`
(`nats_model.adapter.adapter_hash`, its content hash). Both take part in the run key, so new
scorer weights at the same path make new cells. The model stays the base model's name; the worker
loads base + adapter as one model (`load_model(..., adapter=DIR)`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ADAPTER_KEYS = ("adapter", "adapter_sha256")


def adapter_fields(adapter_dir: str | os.PathLike | None) -> dict[str, str]:
    """The cell-config fields of an adapter ({} for none)."""
    if adapter_dir is None:
        return {}
    from nats_model.adapter import adapter_hash

    return {"adapter": str(adapter_dir), "adapter_sha256": adapter_hash(adapter_dir)}


def check_config_matches(config: dict[str, Any], handle_adapter: str | None, handle_sha: str | None) -> None:
    """ValueError unless a cell config's adapter fields name what the loaded model carries."""
    want = config.get("adapter")
    if want is None and handle_adapter is None:
        if config.get("adapter_sha256") is not None:
            raise ValueError("cell config has adapter_sha256 but no adapter")
        return
    if want is None or handle_adapter is None or Path(want) != Path(handle_adapter):
        raise ValueError(f"cell asks for adapter={want!r} but the model was loaded with adapter={handle_adapter!r}")
    if config.get("adapter_sha256") not in (None, handle_sha):
        raise ValueError(f"cell config adapter_sha256 {config['adapter_sha256'][:12]}... does not match the adapter "
                         f"{want!r} as loaded ({str(handle_sha)[:12]}...): the folder changed since the sweep "
                         "was planned")

