"""Reading a YAML / JSON file a command is given (sweep files, training and fine-tuning configs):
UTF-8 (a byte order mark allowed), at most `MAX_CONFIG_BYTES`, one document, no key twice in a
mapping, no Python tags. Anything else is a `ConfigFileError` whose message is one line (where, what),
so every command can refuse a malformed file the same way: one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# A config is a few kilobytes; anything past this is not one (and is not read into memory).
MAX_CONFIG_BYTES = 1 << 20


class ConfigFileError(ValueError):
    """A file that is not a readable config; `str()` is one line without the file name."""


def _yaml_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one
    silently, so `budget: 0.1` followed by `budget: 0.5` would run only 0.5)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (a key may appear once per mapping)", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} (a key may appear once per object)")
        out[key] = value
    return out


def _parse_error(exc: Exception) -> str:
    """A YAML / JSON parse error as one line: where (line, column) and what."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join((f"{where}{what}" + (f" ({context})" if context else "")).split())


def read_config_file(path: str | Path, json_suffixes: tuple[str, ...] = (".json",)) -> Any:
    """The decoded content of a YAML file (JSON when its suffix is in `json_suffixes`)."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise ConfigFileError(f"{str(path)!r} is a folder, not a file")
    if not p.is_file():
        raise ConfigFileError(f"no such file {str(path)!r}")
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{size} bytes; a config file is at most {MAX_CONFIG_BYTES} bytes")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    kind = "JSON" if p.suffix in json_suffixes else "YAML"
    try:
        return json.loads(text, object_pairs_hook=_json_object) if kind == "JSON" else yaml.load(text, _yaml_loader())
    except (yaml.YAMLError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ConfigFileError(f"not valid {kind}: {_parse_error(exc)}") from None
    except RecursionError:
        raise ConfigFileError(f"{kind} nested too deeply") from None
