"""`natsbench eval` and `natsbench workloads` end to end."""

import json
import subprocess
import sys

import pytest

from orchestrator.cli import main
from orchestrator.commands.eval import parse_kv

BASE = ["eval", "--model", "random:tiny-gpt", "--policy", "full", "--workload", "passkey",
        "--workload-param", "context_length=128", "--n", "1"]


@pytest.mark.slow
def test_eval_console_script_prints_a_json_record_on_the_last_line():
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *BASE, "--seed", "3",
                          "--policy-param", "budget_tokens=32", "--policy", "streaming_llm"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["status"] == "done" and record["error"] is None
    assert record["policy"] == "streaming_llm" and record["policy_params"] == {"budget_tokens": 32}
    assert record["workload_params"] == {"context_length": 128} and record["seed"] == 3
    for key in ("accuracy", "kv_bytes_physical", "kv_bytes_full", "kept_fraction", "ttft_s", "tpot_s",
                "tokens_per_s", "peak_memory_bytes", "n_examples", "run_key", "environment", "extras"):
        assert record[key] is not None, key
    assert record["kept_fraction"] < 1.0
    assert "random:tiny-gpt / streaming_llm / passkey: done" in out.stderr


def test_eval_table_format(capsys):
    assert main([*BASE, "--format", "table"]) == 0
    text = capsys.readouterr().out
    assert "status" in text and "done" in text and "kept_fraction" in text and "extras.peak_rss_bytes" in text


@pytest.mark.parametrize("argv, message", [
    (["--policy-param", "budget"], "--policy-param expects K=V, got 'budget'"),
    (["--workload-param", "depth=2"], "parameter 'depth' must be a number in [0, 1]"),
    (["--workload-param", "colour=red"], "has no parameter 'colour'"),
    (["--n", "0"], "--n must be >= 1"),
])
def test_eval_bad_input_exits_2_with_a_message(capsys, argv, message):
    assert main([*BASE, *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("swap, message", [
    (("--policy", "nope"), "unknown policy 'nope'"),
    (("--workload", "nope"), "unknown workload 'nope'"),
    (("--model", "no/such/folder"), "model 'no/such/folder' not found"),
    (("--workload-param", "context_length=40"), "context_length=40 is too small for this task"),
])
def test_eval_unknown_names_and_impossible_params_exit_2(capsys, swap, message):
    argv = list(BASE)
    argv[argv.index(swap[0]) + 1] = swap[1]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_parse_kv_reads_json_values_else_strings():
    assert parse_kv(["a=1", "b=0.5", "c=true", "d=null", "e=hello", "f=[1, 2]", "g="], "--x") == {
        "a": 1, "b": 0.5, "c": True, "d": None, "e": "hello", "f": [1, 2], "g": ""}
    with pytest.raises(ValueError, match="given twice"):
        parse_kv(["a=1", "a=2"], "--x")


def test_workloads_command_lists_parameters_and_defaults(capsys):
    assert main(["workloads"]) == 0
    text = capsys.readouterr().out
    for name in ("passkey", "niah_multikey", "kv_recall", "variable_tracking", "lm_text", "local_dataset"):
        assert f"{name}:" in text
    assert "context_length  default 1024" in text
    assert main(["workloads", "--format", "json"]) == 0
    listing = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    passkey = next(w for w in listing if w["name"] == "passkey")
    assert {p["name"]: p["default"] for p in passkey["params"]}["digits"] == 5
