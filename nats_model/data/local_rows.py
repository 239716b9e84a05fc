"""Rows of a local .parquet or .jsonl file in kvpress's or LongBench's columns (pure parsing).

kvpress columns: `context`, `question`, `answer_prefix`, `answer` (a string or a list of strings),
optionally `max_new_tokens` and `task`. LongBench columns: `context`, `input`, `answers` (a list).
Used by the `local_dataset` workload (services/workloads/local_dataset.py) and by fine-tuning's
local data (nats_model/data/hf_batches.py); nats_model does not import services, so the parser
lives here. Every error is a ValueError starting with the caller's `label` (what the user named:
a workload parameter, a config field).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KVPRESS_COLUMNS = ("context", "question", "answer_prefix", "answer")
LONGBENCH_COLUMNS = ("context", "input", "answers")
SUFFIXES = (".parquet", ".jsonl", ".json")  # .json: JSON lines too


def read_rows(path: str | Path, label: str) -> list[dict]:
    """The rows of a .parquet or .jsonl (.json: JSON lines) file as dicts, at least one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{label} must be an existing file, got {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict(orient="records")
    elif suffix in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not a JSON object per line ({exc.msg})") from None
    else:
        raise ValueError(f"{label} must end in .parquet or .jsonl, got {path.name!r}")
    if not rows:
        raise ValueError(f"{label}: {path} has no rows")
    return rows


def answers_of(value: Any, label: str, column: str = "answer") -> list[str]:
    """The reference answers in a row's `column`: a string, or a list/array of strings."""
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):  # numpy arrays from parquet list columns
        value = value.tolist()
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{label}: column {column!r} must be a string or a list of strings, got {value!r}")


def missing_columns(row: dict, columns: tuple[str, ...] = KVPRESS_COLUMNS) -> list[str]:
    return [c for c in columns if c not in row]


def column_format(row: dict) -> str | None:
    """"kvpress" or "longbench" when `row` has all of that format's columns (kvpress first), else None."""
    if not missing_columns(row, KVPRESS_COLUMNS):
        return "kvpress"
    if not missing_columns(row, LONGBENCH_COLUMNS):
        return "longbench"
    return None


def prompt_answer(row: dict, fmt: str, label: str) -> tuple[str, str, list[str]]:
    """(context, the text after it: question + answer prefix, reference answers) of a row in `fmt`.
    LongBench rows carry no prefix: `"\\n\\n" + input + "\\nAnswer: "`."""
    if fmt == "kvpress":
        return (str(row["context"]), str(row["question"]) + str(row["answer_prefix"] or ""),
                answers_of(row["answer"], label, "answer"))
    if fmt == "longbench":
        return str(row["context"]), "\n\n" + str(row["input"]) + "\nAnswer: ", answers_of(row["answers"], label, "answers")
    raise ValueError(f"{label}: format must be kvpress or longbench, got {fmt!r}")
