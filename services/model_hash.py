"""A local model folder's weights in its cells' identity: the `model_sha256` config field.

A cell of a model that is a folder (a shipped `models/<name>/`, a GPT checkpoint, a local Hugging
Face folder) carries `model_sha256`, the content hash of the folder's weight files
(`nats_model.adapter.base_weights_sha256`: streamed, cached per path + mtime + size, so a large base
is hashed once). It takes part in the run key, so retraining a model at the same path makes new
cells without a code-version bump, while an unchanged folder keeps its keys (a rerun executes
nothing). `random:` test models have no folder and no field; names that resolve to no folder here
(another runner's models) get none either, and the runner's own checks refuse them.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_KEYS = ("model_sha256",)


def model_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The local folder a model name stands for, or None (a `random:` test model, or no such folder)."""
    from services.models import resolve_model

    try:
        return resolve_model(str(name_or_path))
    except ValueError:
        return None


def model_sha256(name_or_path: str | os.PathLike) -> str | None:
    """The weights hash of the model's folder; None without a folder or without weight files (the
    model's loader then refuses it naming the folder)."""
    from nats_model.adapter import base_weights_sha256

    folder = model_folder(name_or_path)
    if folder is None:
        return None
    try:
        return base_weights_sha256(folder)
    except ValueError:
        return None


def model_fields(name_or_path: str | os.PathLike) -> dict[str, str]:
    """The cell-config fields of a model: {"model_sha256": ...} for a folder model, {} otherwise."""
    sha = model_sha256(name_or_path)
    return {} if sha is None else {"model_sha256": sha}
