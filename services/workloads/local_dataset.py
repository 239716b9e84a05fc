"""`local_dataset`: a local parquet or jsonl file in kvpress's columns, so RULER / LongBench
exports a user already has can run without any download.

Columns: `context`, `question`, `answer_prefix`, `answer` (a string or a list of strings),
`max_new_tokens` (optional per row), `task` (optional). The prompt is
`context + question + answer_prefix`, concatenated as they are (kvpress's datasets carry their
own separators). Scoring (`metric`): `auto` uses token F1 (best over the references) for QA
tasks (a task name containing "qa", or LongBench's QA sets) and RULER's `string_match_all`
otherwise; `string_match_part`, `token_f1` and `exact_match` can be forced.
`context_length` (tokens) cuts the middle of a longer context, as LongBench does. `chat=on` sends
context + question as a user turn through the model's chat template and starts the assistant turn
with `answer_prefix` (kvpress's pipeline for instruct models).
The n instances are a seeded sample of the rows without replacement (all rows when n is larger).
"""

from __future__ import annotations

import random
from pathlib import Path

from nats_model.data.local_rows import KVPRESS_COLUMNS, missing_columns
from nats_model.data.local_rows import answers_of as _answers_of
from nats_model.data.local_rows import read_rows as _read_rows

from .base import CountTokens, Instance, Param, Workload, chat_param, chat_parts
from .scoring import best_token_f1, exact_match, string_match_all, string_match_part

REQUIRED_COLUMNS = KVPRESS_COLUMNS
QA_TASKS = {"narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh", "hotpotqa", "2wikimqa",
            "musique", "triviaqa", "qa_1", "qa_2"}
METRICS = ("auto", "string_match_all", "string_match_part", "token_f1", "exact_match")
LABEL = "workload 'local_dataset'"


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a .parquet or .jsonl/.json-lines file as dicts (`nats_model.data.local_rows`);
    ValueError on a missing file, another suffix or missing kvpress columns."""
    rows = _read_rows(path, f"{LABEL}: parameter 'path'")
    missing = missing_columns(rows[0], REQUIRED_COLUMNS)
    if missing:
        raise ValueError(
            f"{LABEL}: {Path(path).expanduser()} lacks column(s) {missing}; kvpress columns are "
            f"{', '.join(REQUIRED_COLUMNS)}, max_new_tokens and task (optional)"
        )
    return rows


def answers_of(value) -> list[str]:
    """The reference answers of a row: a string, or a list/array of strings."""
    return _answers_of(value, LABEL, "answer")


def middle_truncate(text: str, max_tokens: int, count_tokens: CountTokens) -> str:
    """`text` with its middle cut out so that it has at most `max_tokens` tokens."""
    if count_tokens(text) <= max_tokens:
        return text
    keep = len(text) * max_tokens // max(count_tokens(text), 1)
    while keep > 0:
        cut = text[: keep // 2] + text[len(text) - (keep - keep // 2):]
        if count_tokens(cut) <= max_tokens:
            return cut
        keep = int(keep * 0.95)
    return ""


def resolve_metric(metric: str, task: str | None) -> str:
    if metric != "auto":
        return metric
    name = (task or "").lower()
    return "token_f1" if (name in QA_TASKS or "qa" in name) else "string_match_all"


class LocalDataset(Workload):
    name = "local_dataset"
    description = "rows of a local parquet/jsonl in kvpress's columns (RULER / LongBench exports)"
    metric = "string match (RULER) or token F1 (QA), per row"
    params = (
        Param("path", "str", None, "the .parquet or .jsonl file (required)", nullable=True),
        Param("task", "str", None, "keep only rows whose `task` column equals this", nullable=True),
        Param("metric", "str", "auto", "scoring rule", choices=METRICS),
        Param("context_length", "int", None, "cut the middle of longer contexts to this many tokens",
              minimum=1, nullable=True),
        Param("max_new_tokens", "int", None, "tokens to generate (default: the row's column, else 32)",
              minimum=1, nullable=True),
        chat_param(),
    )

    def check(self, params: dict) -> None:
        if params["path"] is None:
            raise ValueError("workload 'local_dataset' needs parameter 'path' (a .parquet or .jsonl file)")

    def instances(self, params: dict | None, n: int, seed: int,
                  count_tokens: CountTokens | None = None) -> list[Instance]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_examples must be a positive integer, got {n!r}")
        p = self.validate(params)
        count = count_tokens or (lambda s: len(s.encode("utf-8")))
        rows = list(enumerate(read_rows(p["path"])))
        if p["task"] is not None:
            tasks = sorted({str(r.get("task")) for _, r in rows})
            rows = [(i, r) for i, r in rows if r.get("task") == p["task"]]
            if not rows:
                raise ValueError(f"workload 'local_dataset': parameter 'task' must be one of {tasks}, "
                                 f"got {p['task']!r}")
        order = list(range(len(rows)))
        random.Random(f"{self.name}:{seed}").shuffle(order)
        return [self._instance(*rows[j], p, count) for j in order[:n]]

    def _instance(self, row_index: int, row: dict, p: dict, count: CountTokens) -> Instance:
        answers = answers_of(row["answer"])
        task = row.get("task")
        task = None if task is None or task != task else str(task)  # NaN from pandas -> None
        context = str(row["context"])
        if p["context_length"] is not None:
            context = middle_truncate(context, p["context_length"], count)
        max_new = p["max_new_tokens"]
        if max_new is None:
            value = row.get("max_new_tokens")
            max_new = int(value) if value is not None and value == value else 32
        user, prefix = context + str(row["question"]), str(row["answer_prefix"] or "")
        prompt = user + prefix
        meta = {"row": row_index, "task": task, "answers": answers, "metric": resolve_metric(p["metric"], task)}
        if p["chat"] == "on":  # kvpress: context and question in the user turn, the prefix opens the answer
            meta["chat"] = chat_parts(user, prefix)
        return Instance(id=f"{self.name}/row{row_index}", workload=self.name, prompt=prompt,
                        answer=answers[0], max_new_tokens=max_new, meta=meta, context_chars=len(context))

    def score(self, prediction: str, instance: Instance) -> float:
        answers, metric = instance.meta["answers"], instance.meta["metric"]
        if metric == "token_f1":
            return best_token_f1(prediction, answers)
        if metric == "string_match_part":
            return string_match_part(prediction, answers)
        if metric == "exact_match":
            return max(exact_match(prediction, a) for a in answers)
        return string_match_all(prediction, answers)
