"""Check a model folder's files before anything loads them: one clear line naming the bad file.

`check_model_folder(folder)` reads only what is cheap to read: `config.json` (valid JSON, an
object), the header of every `*.safetensors` file (its JSON header parses and the tensors it
declares fit in the file, so a truncated download is caught without reading the weights), and a
`pytorch_model*.bin` file only through PyTorch's restricted unpickler
(`torch.load(weights_only=True)`, memory-mapped), so a pickle that carries code is refused, never
run. The sweep driver calls it (through `services.models.check_model`) for every model of a
sweep before Ray starts, and `load_model` calls it before loading.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
# A safetensors header is a little-endian u64 length followed by that many bytes of JSON; the
# format caps the header at 100 MB.
_MAX_HEADER_BYTES = 100_000_000


class ModelFileError(ValueError):
    """A model file is missing, corrupt, truncated or refused; the message names the file."""


def read_config(folder: Path) -> dict[str, Any]:
    """`folder/config.json` as a dict; ModelFileError naming the file when missing or not JSON."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ModelFileError(f"model folder {str(folder)!r} has no {CONFIG_FILE} (a GPT checkpoint or a "
                             "Hugging Face model folder needs one)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path} must hold a JSON object, got a {type(config).__name__}")
    return config


def check_safetensors(path: Path) -> None:
    """ModelFileError unless `path` has a parseable safetensors header whose tensors fit the file."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path} is truncated or not a safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER_BYTES, size - 8):
            raise ModelFileError(f"{path} is truncated or not a safetensors file (header of {n} bytes "
                                 f"declared, file has {size})")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path} is corrupt: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is corrupt: its safetensors header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelFileError(f"{path} is corrupt: tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise ModelFileError(f"{path} is truncated: its header declares {8 + n + end} bytes, the file has {size}")


def check_pickle_weights(path: Path) -> None:
    """Open a `.bin` checkpoint with the restricted unpickler only; one line when it is refused."""
    import pickle

    import torch

    def load(mmap: bool) -> None:
        torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            load(mmap=True)  # memory-mapped: the tensors are not read, only the pickle is
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            load(mmap=False)  # the legacy (pre-zip) format cannot be memory-mapped
    except pickle.UnpicklingError as exc:
        # Name the refused global ("Unsupported global: GLOBAL os.system"), not PyTorch's advice
        # on how to allow it.
        found = re.search(r"Unsupported (?:global|operand)[^.;]*?(?=\. |\.$|;|$)", str(exc), re.MULTILINE)
        why = found.group(0).strip() if found else ""
        raise ModelFileError(
            f"{path} was refused by the restricted loader (torch.load weights_only=True): it holds "
            f"Python objects other than tensors{f' ({why})' if why else ''}; convert the checkpoint "
            "to model.safetensors or remove the file"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path} is corrupt or truncated: {first}") from None


def check_model_folder(folder: Path) -> dict[str, Any]:
    """Check `folder`'s config and weight files (see the module docstring); returns the config."""
    folder = Path(folder)
    config = read_config(folder)
    safetensors = sorted(folder.glob("*.safetensors"))
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if config.get("model_type") in (None, "natsbench-gpt"):
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ModelFileError(f"GPT checkpoint folder {str(folder)!r} has no model.safetensors")
    elif not safetensors and not bins:
        raise ModelFileError(f"Hugging Face model folder {str(folder)!r} has no weights (*.safetensors or "
                             "pytorch_model.bin)")
    for path in safetensors:
        check_safetensors(path)
    if not safetensors:  # transformers reads .bin files only when there are no safetensors
        for path in bins:
            check_pickle_weights(path)
    return config
