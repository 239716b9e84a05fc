"""NAtS scorer adapters in benchmark cells: which config fields name them, and the checks that
refuse a wrong one before any cell runs.

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


def check_adapter_for_model(model_name: str, adapter_dir: str | os.PathLike):
    """Read the adapter and check it against the base model `model_name` (a Hugging Face folder or
    shipped name: config fields and the weights' sha256; a `random:` test model: config fields) without
    loading the base's weights. Returns its `AdapterConfig`; ValueError naming the file and the first
    mismatch, or why the model cannot take an adapter."""
    from nats_model.adapter import load_adapter
    from services.models import _random_model

    folder = _base_folder(model_name)
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


def _base_folder(model_name: str) -> Path | None:
    """The folder a model name stands for (None for a `random:` test model); ValueError when there is none."""
    from services.models import resolve_model

    return resolve_model(model_name)


def _folder_model_type(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def attach_to_model(model: Any, adapter_dir: str | os.PathLike, base_dir: Path | None) -> dict[str, Any]:
    """Attach an adapter's scorers to a loaded model (checked against it, and against `base_dir`'s
    weight hash when the model came from a folder); returns what the handle records about it:
    the config fields and the adapter's config (for `info`), and the scorers (kept alive)."""
    from nats_model.adapter import attach_adapter

    cfg, scorers = attach_adapter(model, adapter_dir, base_dir)
    return {**adapter_fields(adapter_dir), "config": cfg.to_json(), "scorers": scorers}


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

