"""NAtS scorer adapters for Hugging Face causal LMs: the folder format, its checks and hashes.

An adapter folder holds only what NAtS adds to a frozen base model:
- `adapter.safetensors`: one tensor per decoder layer, `layers.{i}.nats_scorer.weight`
  `(num_kv_heads * 3, hidden_size)`, rows head-major (reshape `(num_kv_heads, 3)`), types in the
  order (Global, Local, Sliding window) (docs/METHOD.md, "Type scorer");
- `adapter_config.json`: `AdapterConfig` (which base it belongs to, the inference settings W / chunk
  size / Global bias, and how it was made).

`load_adapter(dir, base)` refuses, with a ValueError naming the file and the first mismatch, a
missing file, a wrong tensor set or shape, or an adapter made for another base model (its config
fields, and the sha256 of the base's weight files when the base is a folder). `attach_adapter`
puts the scorers on a loaded model (through `nats_model.models.hf_nats.attach_nats_scorers`) and
records W / chunk size / Global bias in `model.config.nats_*`, where the `nats` policy reads them.
`import_published` converts the scorers the NAtS authors published (a torch `.pth` dict) into this
format. Nothing here unpickles: safetensors, JSON, and `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "natsbench-nats-adapter"
FORMAT_VERSION = 1
_KEY = "layers.{}.nats_scorer.weight"
_KEY_RE = re.compile(r"^layers\.(\d+)\.nats_scorer\.weight$")
# base weight files hashed by base_weights_sha256 (top level of the folder, sorted by name)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HASH_BLOCK = 1 << 20


@dataclass
class AdapterConfig:
    """What an adapter folder's `adapter_config.json` holds: the base it was made for
    (`base_model_type`, `num_layers`, `num_kv_heads`, `hidden_size`, `base_sha256` = content hash of
    the base's weight files, None when the base had no files, e.g. a random test model), the
    inference settings the `nats` policy uses (`window` W, `chunk_size` C with 1 = token types,
    `global_bias` added to the Global logit before argmax), how it was trained (`lam`, `steps`) and
    where it came from (`source`: "natsbench-finetune" or "imported:<file name>", plus the
    `natsbench_version` that wrote it)."""

    base_model_type: str
    num_layers: int
    num_kv_heads: int
    hidden_size: int
    base_sha256: str | None
    window: int
    chunk_size: int = 1
    global_bias: float = 0.1
    lam: float | None = None
    steps: int | None = None
    natsbench_version: str | None = None
    source: str = "natsbench-finetune"

    def __post_init__(self) -> None:
        if self.natsbench_version is None:
            self.natsbench_version = natsbench_version()

    def check(self, where: str = "adapter config") -> None:
        """ValueError naming the first field whose value is not allowed."""
        for name in ("num_layers", "num_kv_heads", "hidden_size", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"{where}: window must be an int >= 0, got {self.window!r}")
        if isinstance(self.global_bias, bool) or not isinstance(self.global_bias, int | float):
            raise ValueError(f"{where}: global_bias must be a number, got {self.global_bias!r}")
        if not isinstance(self.base_model_type, str) or not self.base_model_type:
            raise ValueError(f"{where}: base_model_type must be a non-empty string, got {self.base_model_type!r}")
        if self.base_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", str(self.base_sha256)):
            raise ValueError(f"{where}: base_sha256 must be null or 64 hex digits, got {self.base_sha256!r}")
        if self.lam is not None and (isinstance(self.lam, bool) or not isinstance(self.lam, int | float)):
            raise ValueError(f"{where}: lam must be null or a number, got {self.lam!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)):
            raise ValueError(f"{where}: steps must be null or an int, got {self.steps!r}")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> AdapterConfig:
        """Parse `adapter_config.json` content; ValueError naming `where` and the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{where}: format {data.get('format')!r} is not {FORMAT!r}")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {version!r} is not supported (this natsbench reads "
                             f"{FORMAT_VERSION})")
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        cfg = cls(**{n: data[n] for n in names if n in data})
        cfg.check(where)
        return cfg


def natsbench_version() -> str:
    """The installed natsbench package version ("unknown" when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("natsbench")
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- base model facts and hashes

def _base_config(base: Any) -> tuple[dict[str, Any], str]:
    """(the base's HF config as a dict, a name for messages) from a folder path or a loaded model."""
    if isinstance(base, str | os.PathLike):
        path = Path(base) / "config.json"
        if not path.is_file():
            raise ValueError(f"base model {str(base)!r}: no config.json (a Hugging Face model folder needs one)")
        try:
            return json.loads(path.read_text()), str(path)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    cfg = getattr(base, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise ValueError(f"base must be a Hugging Face model folder or model, got {type(base).__name__}")
    return cfg.to_dict(), f"the loaded {getattr(cfg, 'model_type', '?')} model"


def base_facts(base: Any) -> dict[str, Any]:
    """The fields an adapter must match: base_model_type, num_layers, num_kv_heads, hidden_size."""
    cfg, where = _base_config(base)
    cfg = {**cfg.get("text_config", {}), **cfg}  # multimodal wrappers keep the LM in text_config
    try:
        heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        return {"base_model_type": cfg["model_type"], "num_layers": int(cfg["num_hidden_layers"]),
                "num_kv_heads": int(heads), "hidden_size": int(cfg["hidden_size"])}
    except KeyError as exc:
        raise ValueError(f"{where}: lacks {exc.args[0]!r} (needed to check an adapter against it)") from None


def _weight_files(base_dir: Path) -> list[Path]:
    return sorted(p for p in base_dir.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))


_file_hash_cache: dict[tuple[str, int, int, int], str] = {}
_cache_lock = threading.Lock()


def _cache_file() -> Path:
    root = os.environ.get("NATSBENCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "natsbench")
    return Path(root) / "weights_sha256.json"


def _read_disk_cache() -> dict[str, str]:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_disk_cache(entries: dict[str, str]) -> None:
    """Best effort (a read-only home must not fail an eval): merge, write a temp file, rename."""
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_disk_cache(), **entries}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, sort_keys=True, indent=0))
        os.replace(tmp, path)
    except OSError:
        pass


def _stream_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, streamed in 1 MiB blocks; cached in memory and on disk
    (`$NATSBENCH_CACHE_DIR` or `~/.cache/natsbench/weights_sha256.json`) under its resolved path,
    inode, mtime and size, so a 16 GB base is hashed once, not once per benchmark cell. (Base
    weights are written once; small files that change in place, such as adapters, are hashed
    without the cache: a rewrite within the file system's timestamp granularity keeps the mtime.)"""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    disk_key = "|".join(str(x) for x in key)
    with _cache_lock:
        if key in _file_hash_cache:
            return _file_hash_cache[key]
    cached = _read_disk_cache().get(disk_key)
    if cached is None:
        cached = _stream_sha256(path)
        _write_disk_cache({disk_key: cached})
    with _cache_lock:
        _file_hash_cache[key] = cached
    return cached


def base_weights_sha256(base_dir: str | os.PathLike) -> str:
    """Content hash of a base model folder's weight files (`*.safetensors`, `*.bin`, `*.pt`, `*.pth`
    at its top level): sha256 over each file's name and content hash, in name order. ValueError when
    the folder has none."""
    folder = Path(base_dir)
    if not folder.is_dir():
        raise ValueError(f"base model folder {str(folder)!r} does not exist")
    files = _weight_files(folder)
    if not files:
        raise ValueError(f"base model folder {str(folder)!r} has no weight files "
                         f"({', '.join('*' + s for s in _WEIGHT_SUFFIXES)})")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def adapter_hash(adapter_dir: str | os.PathLike) -> str:
    """sha256 of an adapter folder's content (config and weights), the adapter's part of a cell's run
    key: the same files at another path hash the same, changed weights hash differently."""
    folder = Path(adapter_dir)
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        path = folder / name
        if not path.is_file():
            raise ValueError(f"adapter {str(folder)!r}: missing {name}")
        h.update(f"{name}\0{_stream_sha256(path)}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- save / load

def _check_weights(weights: dict[int, torch.Tensor], cfg: AdapterConfig, where: str, key: str = _KEY) -> None:
    """ValueError naming the first missing / extra layer or wrong shape (`key`: the tensor name format)."""
    want = (cfg.num_kv_heads * 3, cfg.hidden_size)
    layers = set(weights)
    for i in range(cfg.num_layers):
        if i not in layers:
            raise ValueError(f"{where}: missing {key.format(i)} (the base has {cfg.num_layers} layers)")
        w = weights[i]
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != want:
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{where}: {key.format(i)} has shape {got}, expected {want} "
                             f"(num_kv_heads*3, hidden_size)")
    extra = sorted(layers - set(range(cfg.num_layers)))
    if extra:
        raise ValueError(f"{where}: layer {extra[0]} is not in the base (layers 0..{cfg.num_layers - 1})")


def save_adapter(out_dir: str | os.PathLike, weights: dict[int, torch.Tensor], config: AdapterConfig) -> Path:
    """Write `adapter.safetensors` (scorer weights only, `layers.{i}.nats_scorer.weight`) and
    `adapter_config.json` into `out_dir` (created); returns the folder. ValueError for weights
    that do not match the config."""
    from safetensors.torch import save_file

    config.check()
    _check_weights(weights, config, "save_adapter")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {_KEY.format(i): w.detach().to("cpu").contiguous() for i, w in sorted(weights.items())}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    (out / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n")
    return out


def check_against_base(cfg: AdapterConfig, base: Any, where: str) -> None:
    """ValueError when the adapter was made for another base: the first config field that differs,
    else (base given as a folder, adapter with a recorded hash) a different weight hash."""
    facts = base_facts(base)
    for name, value in facts.items():
        if getattr(cfg, name) != value:
            raise ValueError(f"{where}: made for another base model: {name} is {getattr(cfg, name)!r} in the "
                             f"adapter but {value!r} in the base")
    if isinstance(base, str | os.PathLike) and cfg.base_sha256 is not None:
        actual = base_weights_sha256(base)
        if actual != cfg.base_sha256:
            raise ValueError(f"{where}: made for another base model: base_sha256 {cfg.base_sha256[:12]}... in "
                             f"the adapter, but the weights in {str(base)!r} hash to {actual[:12]}...")


def load_adapter(adapter_dir: str | os.PathLike, base: Any = None) -> tuple[AdapterConfig, dict[int, torch.Tensor]]:
    """Read an adapter folder -> (config, {layer: weight (num_kv_heads*3, hidden)}), checked: both files
    present, config fields valid, exactly one weight per layer of the right shape, and, when `base`
    (a Hugging Face model folder or a loaded model) is given, made for that base. ValueError naming
    the file and the first mismatch."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise ValueError(f"adapter folder {str(folder)!r} does not exist")
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (cfg_path, w_path):
        if not path.is_file():
            raise ValueError(f"adapter {str(folder)!r}: missing {path.name}")
    try:
        data = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
    cfg = AdapterConfig.from_json(data, str(cfg_path))
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{w_path}: not a readable safetensors file ({exc})") from None
    weights: dict[int, torch.Tensor] = {}
    for key, value in tensors.items():
        m = _KEY_RE.match(key)
        if m is None:
            raise ValueError(f"{w_path}: unexpected tensor {key!r} (an adapter holds only "
                             f"{_KEY.format('<i>')})")
        weights[int(m.group(1))] = value
    _check_weights(weights, cfg, str(w_path))
    if base is not None:
        check_against_base(cfg, base, str(cfg_path))
    return cfg, weights


def attach_adapter(model: Any, adapter_dir: str | os.PathLike, base_dir: str | os.PathLike | None = None):
    """Check the adapter against `model` (and `base_dir`'s weight hash when given) and attach its
    scorers with the adapter's W / chunk size / Global bias (`attach_nats_scorers` also records them
    as `model.config.nats_window`, `nats_chunk_size`, `nats_global_bias`, the `nats` policy's
    defaults). Returns `(AdapterConfig, HFNatsScorers)`; the scorers stay alive with the model's hooks."""
    from nats_model.models.hf_nats import attach_nats_scorers

    cfg, weights = load_adapter(adapter_dir, base_dir if base_dir is not None else model)
    if base_dir is not None:  # the folder's config and hash matched; the loaded model must be that folder's
        check_against_base(cfg, model, str(Path(adapter_dir) / CONFIG_FILE))
    scorers = attach_nats_scorers(model, window=cfg.window, chunk_size=cfg.chunk_size,
                                  global_bias=cfg.global_bias, weights=weights)
    return cfg, scorers


# ---------------------------------------------------------------- the published Llama-3.1 scorers

_PUBLISHED_RE = re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.proj_layer\.weight$")


def read_published(pth_path: str | os.PathLike) -> dict[int, torch.Tensor]:
    """The scorer weights of a NAtS-authors `.pth` file: a dict with keys
    `layers.{i}.self_attn.proj_layer.weight` (optionally prefixed `model.`), each
    `(n_kv_heads*3, hidden)` head-major in (G, L, S) order. Loaded with `weights_only=True`
    only; ValueError naming the file for anything else (a refused pickle, other keys)."""
    path = Path(pth_path)
    if not path.is_file():
        raise ValueError(f"{str(path)!r}: no such file")
    try:
        obj = torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any refusal of the safe loader is the same answer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: refused by torch.load(weights_only=True) (only a plain dict of tensors is "
                         f"accepted, nothing is unpickled): {first[:200]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a non-empty dict of tensors, got {type(obj).__name__}")
    weights: dict[int, torch.Tensor] = {}
    for key, value in obj.items():
        m = _PUBLISHED_RE.match(str(key))
        if m is None:
            raise ValueError(f"{path}: unexpected key {key!r} (expected layers.<i>.self_attn.proj_layer.weight, "
                             "optionally prefixed 'model.')")
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
        i = int(m.group(1))
        if i in weights:
            raise ValueError(f"{path}: layer {i} appears twice ({key!r})")
        weights[i] = value.float()
    return weights


def import_published(pth_path: str | os.PathLike, base_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                     window: int = 256, chunk_size: int = 1, global_bias: float = 0.1,
                     lam: float | None = 3e-7) -> AdapterConfig:
    """Convert the NAtS authors' published scorers (`read_published`) for the HF model in `base_dir`
    into an adapter folder `out_dir`; every shape and the layer set are checked against the base's
    config (ValueError naming the first mismatch). Defaults are the published Llama-3.1-8B-Instruct
    settings: W = 256, token types (chunk 1), Global bias 0.1, lambda 3e-7."""
    weights = read_published(pth_path)
    facts = base_facts(base_dir)
    cfg = AdapterConfig(**facts, base_sha256=base_weights_sha256(base_dir), window=window, chunk_size=chunk_size,
                        global_bias=global_bias, lam=lam, steps=None, source=f"imported:{Path(pth_path).name}")
    cfg.check(f"import of {Path(pth_path).name}")
    _check_weights(weights, cfg, f"{pth_path} against {base_dir}", key="layers.{}.self_attn.proj_layer.weight")
    save_adapter(out_dir, weights, cfg)
    return cfg
