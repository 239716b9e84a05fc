"""nats_model.data.local_rows: the one parser of local kvpress / LongBench rows that the
`local_dataset` workload and fine-tuning's local data share."""

import json

import numpy as np
import pytest

from nats_model.data import hf_batches, local_rows
from services.workloads import local_dataset


def test_both_formats_parse_to_context_question_answers(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"context": "C1", "question": " Q?", "answer_prefix": " A:", "answer": ["x", "y"]},
            {"context": "C2", "input": "What?", "answers": ["z"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # a blank line is skipped
    got = local_rows.read_rows(path, "f")
    assert got == rows
    assert [local_rows.column_format(r) for r in got] == ["kvpress", "longbench"]
    assert local_rows.prompt_answer(got[0], "kvpress", "f") == ("C1", " Q? A:", ["x", "y"])
    assert local_rows.prompt_answer(got[1], "longbench", "f") == ("C2", "\n\nWhat?\nAnswer: ", ["z"])
    assert local_rows.column_format({"text": "t"}) is None
    assert local_rows.answers_of(np.array(["a", "b"]), "f") == ["a", "b"]  # parquet list column


def test_errors_name_the_callers_field(tmp_path):
    with pytest.raises(ValueError, match=r"^my field must be an existing file"):
        local_rows.read_rows(tmp_path / "none.jsonl", "my field")
    (tmp_path / "a.csv").write_text("x\n")
    with pytest.raises(ValueError, match=r"^my field must end in \.parquet or \.jsonl, got 'a.csv'"):
        local_rows.read_rows(tmp_path / "a.csv", "my field")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a JSON object per line"):
        local_rows.read_rows(tmp_path / "bad.jsonl", "my field")
    with pytest.raises(ValueError, match=r"^L: column 'answers' must be a string or a list of strings"):
        local_rows.answers_of([1, 2], "L", "answers")


def test_workload_and_finetuning_read_the_same_rows_through_it(tmp_path):
    path = tmp_path / "kv.jsonl"
    row = {"context": "ctx ", "question": "q?", "answer_prefix": " Answer:", "answer": "PLUM", "task": "t"}
    path.write_text(json.dumps(row) + "\n")
    assert local_dataset.read_rows(path) == [row]
    assert hf_batches.read_local_rows(path) == [("ctx ", "q? Answer:", "PLUM")]
    assert local_dataset.answers_of(["PLUM", "plum"]) == ["PLUM", "plum"]
    with pytest.raises(ValueError, match=r"^workload 'local_dataset': column 'answer'"):
        local_dataset.answers_of(7)
