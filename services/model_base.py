"""The base model of a run: the unit a researcher compares KV policies on.

NAtS runs often carry another model name than the baselines they are compared with: a GPT checkpoint
whose NAtS scorers were fine-tuned on a frozen base (`tiny-nats-ft` on `tiny-base`), a Hugging Face
base with a NAtS scorer adapter (`tiny-llama-base + tiny-llama-nats`), a Llama folder converted exactly
from a GPT (`tiny-llama-base` from `tiny-base`). `base_model` follows what the model folder records,
without loading weights, until it reaches a model that names no parent; that model is the base (a model
trained from scratch is its own base). The records, in the order they are looked for:

- `natsbench_import.json` (written by `natsbench model import`): a real pretrained model, its own base;
- `finetune_config.json` with a `base` (written by `natsbench finetune` for a GPT checkpoint);
- a `base: <model>` line in MODEL_CARD.md, or the card's `gpt_to_llama SRC OUT` conversion command;
- an adapter (`adapter=`): a variant of the model it is attached to.

A name that resolves to no folder (a store read on another machine, a `random:` test model) is its own
base. The result is a plain dict, stored in the run record's `extras.model_info` by
`services.models.load_model` and derived by the dashboard for older rows.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from services.paths import MODELS_DIR, REPO_ROOT

IMPORT_RECORD = "natsbench_import.json"  # services.model_import.IMPORT_RECORD (not imported: no torch here)
FINETUNE_RECORD = "finetune_config.json"
CARD = "MODEL_CARD.md"
# origin labels
SCRATCH = "trained from scratch"
REAL = "real model"
TEST_MODEL = "random test model"
UNKNOWN = "unknown (no model folder here)"

_CARD_BASE = re.compile(r"^\s*base:\s*`?([^`\s]+)`?\s*$", re.MULTILINE)
_CARD_CONVERTED = re.compile(r"gpt_to_llama\s+([^\s`]+)\s+([^\s`]+)")
_CARD_SOURCE = re.compile(r"^\s*source:\s*`?(\w+)`?\s*$", re.MULTILINE)
_MAX_DEPTH = 8  # parent links followed at most (a cycle of cards ends here)


def _label(name_or_folder: str) -> str:
    """A model's short name: the folder name of a path, the name itself otherwise."""
    return str(name_or_folder).rstrip("/").rsplit("/", 1)[-1] or str(name_or_folder)


def _folder(name_or_folder: str) -> Path | None:
    """The model folder a name stands for (as given, under the repository, or under models/); None."""
    name = str(name_or_folder)
    if name.startswith("random:"):
        return None
    for candidate in (Path(name).expanduser(), REPO_ROOT / name, MODELS_DIR / name):
        if candidate.is_dir():
            return candidate
    return None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _parent(folder: Path) -> tuple[str | None, str, bool]:
    """(the model this folder was made from or None, how: its origin label, whether it is a real
    imported model)."""
    imported = _read_json(folder / IMPORT_RECORD)
    if imported:
        return None, f"{REAL} (imported from {imported.get('source', 'gguf')})", True
    card = (folder / CARD).read_text(errors="replace") if (folder / CARD).is_file() else ""
    source = _CARD_SOURCE.search(card)
    if source and source.group(1).lower() in ("gguf", "hf", "huggingface", "pretrained"):
        return None, f"{REAL} (imported from {source.group(1)})", True
    base = _read_json(folder / FINETUNE_RECORD).get("base")
    if isinstance(base, str) and base:
        return base, f"fine-tuned from {_label(base)}", False
    named = _CARD_BASE.search(card)
    if named:
        return named.group(1), f"made from {_label(named.group(1))}", False
    converted = _CARD_CONVERTED.search(card)
    if converted and _label(converted.group(2)) == folder.name:
        return converted.group(1), f"converted from {_label(converted.group(1))}", False
    return None, SCRATCH, False


@functools.lru_cache(maxsize=256)
def _resolve(name: str) -> tuple[str, str, bool, tuple[str, ...]]:
    """(base label, origin of the named model, real, chain of labels from the model to its base)."""
    chain = [_label(name)]
    folder = _folder(name)
    if folder is None:
        return chain[0], TEST_MODEL if name.startswith("random:") else UNKNOWN, False, tuple(chain)
    parent, origin, real = _parent(folder)
    here, depth = folder, 0
    while parent is not None and depth < _MAX_DEPTH:
        nxt = _folder(parent) or _folder(str(here / parent))
        chain.append(_label(parent))
        if nxt is None:
            break
        parent, _, parent_real = _parent(nxt)
        real = real or parent_real
        here, depth = nxt, depth + 1
    return chain[-1], origin, real, tuple(chain)


def base_model(name_or_folder: str, adapter: str | None = None) -> dict:
    """The base model of a run of `name_or_folder` (with `adapter` attached, if any), as a dict:
    `base` (the comparison unit's label), `variant` (the model as run: its label, "model + adapter"
    with an adapter), `origin` (trained from scratch, real model (imported from gguf), fine-tuned from X,
    converted from X, NAtS adapter on X, random test model), `is_base` (the run is on the base itself),
    `real` (the base is an imported pretrained model) and `chain` (labels from the variant to the base)."""
    name = str(name_or_folder)
    base, origin, real, chain = _resolve(name)
    variant = _label(name)
    if adapter:
        variant = f"{variant} + {_label(str(adapter))}"
        origin = f"NAtS adapter on {_label(name)}"
        chain = (variant, *chain)
    return {"base": base, "variant": variant, "origin": origin, "is_base": variant == base, "real": real,
            "chain": list(chain)}
