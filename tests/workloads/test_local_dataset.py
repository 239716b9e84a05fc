"""`local_dataset`: reads kvpress-style parquet and jsonl files written here."""

import json

import pandas as pd
import pytest

from services import workloads

ROWS = [
    {"context": "Alice lives in Paris. ", "question": "Where does Alice live?", "answer_prefix": " Answer:",
     "answer": ["Paris"], "max_new_tokens": 8, "task": "qa_1"},
    {"context": "The magic numbers are 11 and 22. ", "question": "What are the magic numbers?",
     "answer_prefix": " Answer:", "answer": ["11", "22"], "max_new_tokens": 6, "task": "niah_multivalue"},
    {"context": "Bob owns a red car. ", "question": "What colour is Bob's car?", "answer_prefix": "",
     "answer": ["red", "crimson"], "max_new_tokens": 4, "task": "qa_2"},
]


def _write(tmp_path, fmt, rows=ROWS):
    path = tmp_path / f"data.{fmt}"
    if fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_reads_rows_builds_prompts_and_scores(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    w = workloads.get("local_dataset")
    insts = w.instances({"path": path}, 10, seed=0)
    assert len(insts) == 3  # n larger than the file: every row once
    by_row = {x.meta["row"]: x for x in insts}
    assert by_row[0].prompt == "Alice lives in Paris. Where does Alice live? Answer:"
    assert by_row[0].max_new_tokens == 8 and by_row[0].meta["metric"] == "token_f1"
    assert by_row[1].meta["answers"] == ["11", "22"] and by_row[1].meta["metric"] == "string_match_all"
    assert w.score(" Paris.", by_row[0]) == 1.0
    assert w.score(" in Paris, France", by_row[0]) == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert w.score("11 and 22", by_row[1]) == 1.0 and w.score("only 22", by_row[1]) == 0.5
    assert w.score("crimson", by_row[2]) == 1.0  # best F1 over the references
    assert len({x.content_hash for x in insts}) == 3


def test_parquet_and_jsonl_give_the_same_instances(tmp_path):
    a = workloads.instances("local_dataset", {"path": _write(tmp_path, "parquet")}, 3, seed=1)
    b = workloads.instances("local_dataset", {"path": _write(tmp_path, "jsonl")}, 3, seed=1)
    assert [x.content_hash for x in a] == [x.content_hash for x in b]


def test_seeded_sample_task_filter_and_overrides(tmp_path):
    rows = [dict(ROWS[0], context=f"Fact {i}. ", answer=f"a{i}") for i in range(20)]
    path = _write(tmp_path, "jsonl", rows + [ROWS[1]])
    s0 = workloads.instances("local_dataset", {"path": path}, 5, seed=0)
    assert [x.id for x in s0] == [x.id for x in workloads.instances("local_dataset", {"path": path}, 5, seed=0)]
    assert [x.id for x in s0] != [x.id for x in workloads.instances("local_dataset", {"path": path}, 5, seed=1)]
    only = workloads.instances("local_dataset", {"path": path, "task": "niah_multivalue"}, 5, seed=0)
    assert [x.meta["row"] for x in only] == [20]
    forced = workloads.instances("local_dataset", {"path": path, "metric": "exact_match", "max_new_tokens": 3},
                                 1, seed=0)[0]
    assert forced.max_new_tokens == 3 and forced.meta["metric"] == "exact_match"
    with pytest.raises(ValueError, match=r"'task' must be one of .*qa_1"):
        workloads.instances("local_dataset", {"path": path, "task": "nope"}, 1, seed=0)


def test_context_length_cuts_the_middle(tmp_path):
    row = dict(ROWS[0], context="HEAD " + "x" * 500 + " TAIL")
    path = _write(tmp_path, "jsonl", [row])
    inst = workloads.instances("local_dataset", {"path": path, "context_length": 100}, 1, seed=0)[0]
    context = inst.prompt[: -len(row["question"] + row["answer_prefix"])]
    assert len(context.encode()) <= 100 and context.startswith("HEAD") and context.endswith("TAIL")


def test_bad_files_give_clear_errors(tmp_path):
    w = workloads.get("local_dataset")
    with pytest.raises(ValueError, match="must be an existing file"):
        w.instances({"path": str(tmp_path / "missing.jsonl")}, 1, seed=0)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"\.parquet or \.jsonl"):
        w.instances({"path": str(tmp_path / "data.csv")}, 1, seed=0)
    (tmp_path / "cols.jsonl").write_text(json.dumps({"context": "c", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['question', 'answer_prefix'\]"):
        w.instances({"path": str(tmp_path / "cols.jsonl")}, 1, seed=0)


def test_chat_on_puts_context_and_question_in_the_user_turn(tmp_path):
    w = workloads.get("local_dataset")
    path = _write(tmp_path, "jsonl")
    insts = w.instances({"path": path, "chat": "on"}, 3, seed=0)
    for inst in insts:
        row = ROWS[inst.meta["row"]]
        assert inst.meta["chat"] == {"user": row["context"] + row["question"], "assistant_prefix": row["answer_prefix"]}
        assert inst.prompt == row["context"] + row["question"] + row["answer_prefix"]
    assert all("chat" not in i.meta for i in w.instances({"path": path}, 3, seed=0))
