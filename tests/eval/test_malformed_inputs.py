"""Files a command reads, malformed: a Hugging Face config with a field of the wrong type, a GPT
config that does not fit its weights, training / fine-tuning configs that are not UTF-8, not YAML,
or give a key twice. Each is one line naming the file and the problem, exit 2, no traceback, and a
command that only reads writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.cli import main

MODELS = Path(__file__).resolve().parents[2] / "models"


def _one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _eval(folder) -> list[str]:
    return ["eval", "--model", str(folder), "--policy", "full", "--workload", "passkey",
            "--workload-param", "context_length=64", "--n", "1"]


def test_hf_config_with_a_wrong_field_type_is_named(tmp_path, capsys):
    folder = tmp_path / "llama"
    shutil.copytree(MODELS / "tiny-llama-base", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": "two"}))
    before = sorted(p.name for p in folder.iterdir())
    line = _one_line(capsys, _eval(folder))
    assert f"{folder / 'config.json'} is not a valid Hugging Face config" in line and "num_hidden_layers" in line
    assert sorted(p.name for p in folder.iterdir()) == before


def test_gpt_config_that_does_not_fit_its_weights_is_named(tmp_path, capsys):
    folder = tmp_path / "gpt"
    shutil.copytree(MODELS / "tiny-base", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "n_layer": cfg["n_layer"] + 1}))
    line = _one_line(capsys, _eval(folder))
    assert f"GPT checkpoint folder {str(folder)!r}: config.json and model.safetensors do not make a model" in line
    assert "Missing key(s)" in line


@pytest.mark.parametrize("command", ["train", "finetune"])
@pytest.mark.parametrize("data, problem", [
    (b"steps: \xe9\n", "not UTF-8 text (byte 0xe9 at offset 7)"),
    (b"steps: [1\n", "not valid YAML: line 2, column 1: expected ',' or ']'"),
    (b"steps: 1\nsteps: 2\n", "not valid YAML: line 2, column 1: duplicate key 'steps'"),
    (b"a: 1\n---\nb: 2\n", "but found another document"),
], ids=["latin1", "syntax", "duplicate", "two-documents"])
def test_malformed_training_configs(tmp_path, capsys, command, data, problem):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(data)
    out = tmp_path / "out"
    line = _one_line(capsys, [command, str(cfg), "--out", str(out)])
    assert line.startswith(f"natsbench {command}: invalid config {cfg}: ") and problem in line, line
    assert not out.exists()
