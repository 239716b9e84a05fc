"""Turn a GGUF file into a local Hugging Face model folder that every natsbench command runs as it is.

`import_gguf(path, out, dtype="bfloat16")` checks the file before anything is written (the GGUF magic,
a header that parses, every tensor's data inside the file, a supported architecture), then lets
transformers dequantise it (`from_pretrained(..., gguf_file=)`, which needs the `gguf` package; GGUF
holds no pickle and nothing else is loaded), rebuilds a plain causal LM from its config without the
`quantization_config` (a model loaded from GGUF refuses `save_pretrained`), copies the state dict
into it and saves: `model.safetensors`, `config.json`, the tokenizer with its chat template,
`generation_config.json`, plus `natsbench_import.json` (what was imported, for the record and the
dashboard's "real model" label) and `MODEL_CARD.md`. The folder is written under a temporary name
beside `out` and renamed at the end, so a failure leaves nothing behind.

Bad input raises `ModelImportError` (a ValueError) with one line naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats_model.models.families import SUPPORTED_MODEL_TYPES

# GGUF architectures accepted: the families natsbench's engine runs (transformers dequantises them).
SUPPORTED_ARCHITECTURES = SUPPORTED_MODEL_TYPES
IMPORT_DTYPES = ("bfloat16", "float32")
IMPORT_RECORD = "natsbench_import.json"
GGUF_MAGIC = b"GGUF"


class ModelImportError(ValueError):
    """A GGUF file (or the output folder) cannot be imported; the message names it and the problem."""


@dataclass(frozen=True)
class GGUFSummary:
    """What the header of a GGUF file says: architecture, model name, tensor count and the
    quantisation types of its tensors (name -> count)."""

    path: Path
    architecture: str
    name: str | None
    n_tensors: int
    quantization: dict[str, int]
    file_type: int | None
    size_bytes: int


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """The sha256 of a file, streamed."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:  # noqa: BLE001 - a malformed field reads as absent; the checks below name it
        return None


def inspect_gguf(path: str | os.PathLike) -> GGUFSummary:
    """Read and check a GGUF file's header without loading its weights; ModelImportError naming the
    file when it is missing, not GGUF, truncated, corrupt or of an unsupported architecture."""
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ModelImportError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise ModelImportError(f"{path}: GGUF version {version} is not supported (allowed: 2, 3)")
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - a project dependency
        raise ModelImportError("the 'gguf' package is missing: run `make install`") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt or truncated file
        raise ModelImportError(f"{path} is truncated or corrupt: its GGUF header does not parse "
                               f"({type(exc).__name__}: {str(exc)[:120]})") from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ModelImportError(f"{path} is truncated: tensor {t.name!r} ends at byte {end}, the file has {size}")
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise ModelImportError(f"{path} is corrupt: it has no general.architecture field")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelImportError(f"{path}: architecture {arch!r} is not supported (allowed: "
                               f"{', '.join(SUPPORTED_ARCHITECTURES)})")
    if not reader.tensors:
        raise ModelImportError(f"{path} is corrupt: it holds no tensors")
    quant = Counter(t.tensor_type.name for t in reader.tensors)
    file_type = _field(reader, "general.file_type")
    return GGUFSummary(path=path, architecture=arch, name=_field(reader, "general.name"),
                       n_tensors=len(reader.tensors), quantization=dict(sorted(quant.items())),
                       file_type=int(file_type) if isinstance(file_type, int) else None, size_bytes=size)


def _check_out(out: Path) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ModelImportError(f"output folder {out} already exists and is not empty (choose another --out or "
                               "remove it)")
    if not out.parent.exists():
        raise ModelImportError(f"output folder {out}: its parent {out.parent} does not exist")


def _plain_model(gguf_model: Any, torch_dtype: Any) -> Any:
    """A plain causal LM with the GGUF model's weights and config, minus the quantisation marker."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    model_type = cfg.pop("model_type")
    for key in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    config = AutoConfig.for_model(model_type, **cfg)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # tied embeddings: lm_head.weight is the embedding; anything else missing is a real mismatch
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelImportError(f"the dequantised weights do not match a plain {model_type} model: missing "
                               f"{missing[:3]}, unexpected {unexpected[:3]}")
    return plain.to(torch_dtype).eval()


def _card(summary: GGUFSummary, record: dict) -> str:
    q = ", ".join(f"{k} x{v}" for k, v in summary.quantization.items())
    return "\n".join([
        f"# {record['name']}",
        "",
        "A pretrained model imported from GGUF by `natsbench model import` (written by script; do not edit).",
        "",
        "| field | value |",
        "|---|---|",
        f"| source file | `{summary.path.name}` |",
        f"| source sha256 | `{record['source_sha256']}` |",
        f"| source size | {summary.size_bytes} bytes |",
        f"| architecture | {summary.architecture} ({record['model_type']}) |",
        f"| GGUF model name | {summary.name or '-'} |",
        f"| dequantised from | {q} (GGUF file type {summary.file_type}) |",
        f"| stored as | {record['dtype']} safetensors |",
        f"| parameters | {record['n_parameters']:,} |",
        f"| layers / hidden / heads / KV heads | {record['num_layers']} / {record['hidden_size']} / "
        f"{record['num_heads']} / {record['num_kv_heads']} |",
        f"| chat template | {'yes' if record['chat_template'] else 'no'} |",
        f"| command | `{record['command']}` |",
        f"| imported | {record['imported_at']} in {record['seconds']} s |",
        "",
        "The weights are the GGUF's dequantised values (rounded to the stored dtype), not the original",
        "full-precision checkpoint: quality is that of the quantised model.",
        "",
    ])


def import_gguf(path: str | os.PathLike, out: str | os.PathLike, dtype: str = "bfloat16",
                command: str | None = None, name: str | None = None, extra: dict | None = None,
                progress: Any = print) -> dict:
    """Import a GGUF file into the HF folder `out` (see the module docstring); returns the import record.
    Nothing is written unless every check passes and the conversion succeeds."""
    if dtype not in IMPORT_DTYPES:
        raise ModelImportError(f"--dtype must be one of {', '.join(IMPORT_DTYPES)}, got {dtype!r}")
    out = Path(out)
    _check_out(out)
    summary = inspect_gguf(path)
    t0 = time.perf_counter()
    progress(f"importing {summary.path.name}: {summary.architecture}, {summary.n_tensors} tensors "
             f"({', '.join(summary.quantization)}) -> {out} ({dtype})")
    source_sha = sha256_file(summary.path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    folder, fname = str(summary.path.parent), summary.path.name
    try:
        progress("dequantising (transformers reads the GGUF) ...")
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    except Exception as exc:  # noqa: BLE001 - transformers' own refusal, named in one line
        raise ModelImportError(f"{summary.path}: transformers could not read it ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    plain = _plain_model(gguf_model, torch_dtype)
    generation_config = gguf_model.generation_config
    del gguf_model
    tmp = out.parent / f".{out.name}.importing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        progress("saving safetensors, tokenizer, generation config ...")
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        generation_config.save_pretrained(tmp)
        cfg = plain.config
        record = {
            "name": name or out.name, "source": "gguf", "source_file": summary.path.name,
            "source_sha256": source_sha, "source_size_bytes": summary.size_bytes,
            "architecture": summary.architecture, "model_type": cfg.model_type, "gguf_name": summary.name,
            "quantization": summary.quantization, "gguf_file_type": summary.file_type, "dtype": dtype,
            "n_parameters": sum(p.numel() for p in plain.parameters()), "num_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size, "num_heads": cfg.num_attention_heads,
            "num_kv_heads": cfg.num_key_value_heads, "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "command": command or f"natsbench model import {summary.path.name} --out {out} --dtype {dtype}",
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - t0, 1), **(extra or {}),
        }
        (tmp / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "MODEL_CARD.md").write_text(_card(summary, record))
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"done: {out} ({record['n_parameters']:,} parameters, {record['seconds']} s)")
    return record


def read_import_record(folder: str | os.PathLike) -> dict | None:
    """The folder's `natsbench_import.json` (None when it was not imported by natsbench)."""
    path = Path(folder) / IMPORT_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
