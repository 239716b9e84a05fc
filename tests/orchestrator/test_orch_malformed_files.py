"""Sweep files malformed in every way a file can be (encoding, YAML / JSON syntax, document
structure, duplicate keys, nesting, size, lengths the store's columns hold): `natsbench sweep`
exits 2 before any work with the header line and one line naming the problem, no traceback,
and creates no store."""

from __future__ import annotations

import json

import pytest
import yaml

from orchestrator.cli import main

GOOD = {"name": "malformed", "models": [{"name": "random:tiny-gpt"}], "policies": [{"name": "full"}],
        "workloads": [{"name": "passkey", "params": {"context_length": 128}, "examples": 1}], "seeds": [0]}


def _yaml(**change) -> bytes:
    return yaml.safe_dump({**GOOD, **change}).encode()


CASES = [
    ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "<file>: not UTF-8 text (byte 0xe9 at offset 9)"),
    ("utf16.yaml", yaml.safe_dump(GOOD).encode("utf-16"), "<file>: not UTF-8 text (byte 0xff at offset 0)"),
    ("syntax.yaml", b"name: [unclosed\n", "<file>: not valid YAML: line 2, column 1: expected ',' or ']'"),
    ("tab.yaml", b"name: x\n\tmodels: []\n", "<file>: not valid YAML: line 2, column 1: found character '\\t'"),
    ("nul.yaml", b"name: a\x00b\n", "<file>: not valid YAML: unacceptable character #x0000"),
    ("two_documents.yaml", b"name: a\n---\nname: b\n", "but found another document"),
    ("python_tag.yaml", b"name: !!python/object/apply:os.system ['echo hi']\n",
     "could not determine a constructor for the tag"),
    ("duplicate.yaml", _yaml() + b"seeds: [1]\n", "duplicate key 'seeds' (a key may appear once per mapping)"),
    ("duplicate.json", json.dumps(GOOD)[:-1].encode() + b', "seeds": [1]}',
     "<file>: not valid JSON: duplicate key 'seeds' (a key may appear once per object)"),
    ("truncated.json", b'{"name": "x", ', "<file>: not valid JSON: Expecting property name"),
    ("deep.yaml", b"name: f\nx: " + b"[" * 5000 + b"]" * 5000 + b"\n", "<file>: YAML nested too deeply"),
    ("huge.yaml", b"name: f\n#" + b"x" * (1 << 20) + b"\n", "<file>: 1048586 bytes; a config file is at most 1048576 bytes"),
    ("scalar.yaml", b"42\n", "<root>: expected a mapping with name, models, policies, workloads; got int"),
    ("long_name.yaml", _yaml(name="x" * 201), "name: String should have at most 200 characters"),
    ("long_model.yaml", _yaml(models=[{"name": "m" * 501}]), "models[0].name: String should have at most 500"),
    ("not_a_list.yaml", _yaml(models={"name": "random:tiny-gpt"}), "models: Input should be a valid list"),
    ("date_name.yaml", _yaml(name="2024-01-01").replace(b"'2024-01-01'", b"2024-01-01"),
     "name: Input should be a valid string (got datetime.date(2024, 1, 1))"),
    # 20 axes of 2 values: 2**20 grid points, refused by counting before any point is built or checked
    ("grid_bomb.yaml", _yaml(policies=[{"name": "streaming_llm", "params": {"budget": [0.1, 0.2], **{
        f"p{i}": [0, 1] for i in range(20)}}}]),
     "<sweep>: expands to 2097152 cells (models x workload grids x policy grids x protocols x seeds); at most 100000"),
]


@pytest.mark.parametrize("name, data, problem", CASES, ids=[c[0] for c in CASES])
def test_malformed_sweep_file_is_refused_in_one_problem_line(tmp_path, capsys, name, data, problem):
    path = tmp_path / name
    path.write_bytes(data)
    db = tmp_path / "never.sqlite"
    assert main(["sweep", str(path), "--db", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == f"natsbench sweep: invalid sweep file {path}:", err
    assert len(lines) == 2 and lines[1].startswith("  ") and problem in lines[1], err
    assert "Traceback" not in err
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_folder_and_a_missing_file_are_named(tmp_path, capsys):
    for path, problem in ((tmp_path, "is a folder, not a file"), (tmp_path / "nope.yaml", "no such file")):
        assert main(["sweep", str(path), "--dry-run"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 2 and problem in lines[1]


def test_the_cell_count_is_what_the_planner_expands(tmp_path):
    """cell_count (the cap's measure) equals len(expand(spec)) on a sweep with every kind of axis and restriction."""
    from orchestrator.plan import expand
    from orchestrator.spec import MAX_CELLS, cell_count, parse_spec

    data = {**GOOD, "models": [{"name": "random:tiny-gpt"}, {"name": "random:tiny-llama"}],
            "policies": [{"name": "full"}, {"name": "h2o", "compress": ["streaming", "prompt"],
                                            "params": {"budget": [0.1, 0.2, 0.5]}},
                         {"name": "tova", "models": ["random:tiny-llama"], "params": {"budget": [0.1, 0.3]}}],
            "workloads": [{"name": "passkey", "params": {"context_length": [128, 256]}, "examples": 1},
                          {"name": "niah_multikey", "models": ["random:tiny-gpt"], "params": {"context_length": 128}}],
            "seeds": [0, 1]}
    spec = parse_spec(data)
    assert cell_count(spec) == len(expand(spec)) == 2 * (2 * 7 + 1 * 7 + 2 * 9)  # seeds x (gpt: passkey, niah; llama: passkey)
    assert cell_count(spec) < MAX_CELLS


def test_a_byte_order_mark_is_accepted(tmp_path):
    from orchestrator.spec import load_spec

    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(GOOD).encode())
    assert load_spec(path).name == "malformed"
