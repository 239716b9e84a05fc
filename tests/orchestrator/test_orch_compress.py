"""`compress` (the compression protocol) as a cell parameter: a sweep axis per policy, refused with one
line for a pair the policy does not support, part of the run key only when it is not the policy's
default (so cells that ran the default before the field existed keep their keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.plan import build_cells, describe, expand
from orchestrator.spec import SpecError, load_spec, parse_spec
from services.declaration import PROTOCOLS, default_protocol, key_config
from services.store import run_key

REPO = Path(__file__).resolve().parents[2]


def spec_with(*policies, workloads=None):
    return {"name": "c", "models": [{"name": "random:tiny-gpt"}], "policies": list(policies),
            "workloads": workloads or [{"name": "passkey", "params": {"context_length": 128}, "examples": 1}]}


def test_protocols_are_the_engines():
    from nats_model.policies.base import PROTOCOLS as ENGINE_PROTOCOLS

    assert PROTOCOLS == ENGINE_PROTOCOLS


def test_compress_is_an_axis_and_defaults_to_the_policys_own():
    spec = parse_spec(spec_with({"name": "h2o", "compress": ["streaming", "prompt", "context"],
                                 "params": {"budget": [0.25, 0.5]}},
                                {"name": "snapkv", "params": {"budget": 0.25}},
                                {"name": "tova", "compress": "prompt", "params": {"budget": 0.25}}))
    configs = expand(spec)
    got = sorted((c["policy"], c["policy_params"].get("budget"), c["compress"]) for c in configs)
    assert got == sorted([("h2o", b, c) for b in (0.25, 0.5) for c in PROTOCOLS]
                         + [("snapkv", 0.25, "prompt"), ("tova", 0.25, "prompt")])
    cells = build_cells(spec)
    assert len({c.run_key for c in cells}) == len(configs) == 8
    assert "compress=context" in describe(next(c for c in configs if c["compress"] == "context"))


def test_the_key_hashes_compress_only_when_it_is_not_the_default():
    base = {"model": "random:tiny-gpt", "policy": "h2o", "policy_params": {"budget": 0.25}, "workload": "passkey",
            "workload_params": {}, "n_examples": 1, "seed": 0, "device": "cpu", "dtype": "float32"}
    assert default_protocol("h2o") == "streaming" and default_protocol("snapkv") == "prompt"
    assert run_key({**base, "compress": "streaming"}) == run_key(base)  # the key it had before the field
    assert run_key({**base, "compress": "prompt"}) != run_key(base)
    assert run_key({**base, "compress": "prompt"}) != run_key({**base, "compress": "context"})
    snap = {**base, "policy": "snapkv"}
    assert run_key({**snap, "compress": "prompt"}) == run_key(snap)
    assert run_key({**snap, "compress": "context"}) != run_key(snap)
    assert key_config({**snap, "compress": "prompt"}) == snap


def test_shipped_sweeps_keep_their_run_keys():
    """Every cell of the shipped sweep files has the key it had before `compress` existed."""
    for name in ("demo.yaml", "smoke.yaml"):
        for cell in build_cells(load_spec(REPO / "configs" / name)):
            assert cell.config["compress"] == default_protocol(cell.config["policy"])
            before = {k: v for k, v in cell.config.items() if k != "compress"}
            assert cell.run_key == run_key(before)


@pytest.mark.parametrize("policy, value, allowed", [("nats", "prompt", "streaming"),
                                                     ("snapkv", "streaming", "prompt, context"),
                                                     ("h2o", "lazy", "streaming, prompt, context")])
def test_unsupported_pair_is_one_line_naming_field_policy_and_allowed(policy, value, allowed):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with({"name": policy, "compress": [value] if policy == "snapkv" else value,
                              "params": {} if policy == "nats" else {"budget": 0.5}}))
    assert len(err.value.problems) == 1
    line = err.value.problems[0]
    where = "policies[0].compress[0]" if policy == "snapkv" else "policies[0].compress"
    assert line == f"{where}: policy {policy!r} does not support compress={value!r}; allowed: {allowed}"


def test_context_needs_a_workload_with_a_question():
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with({"name": "h2o", "compress": "context", "params": {"budget": 0.5}},
                             workloads=[{"name": "lm_text", "params": {"context_length": 64}, "examples": 1}]))
    assert len(err.value.problems) == 1 and "'lm_text'" in err.value.problems[0]
    assert err.value.problems[0].startswith("policies[0].compress: ")


def test_sweep_refuses_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(spec_with({"name": "nats", "compress": "prompt"})))
    db = tmp_path / "never.sqlite"
    assert main(["sweep", str(cfg), "--db", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith("  ")]
    assert problems == ["  policies[0].compress: policy 'nats' does not support compress='prompt'; allowed: streaming"]
    assert not db.exists()


def test_eval_refuses_an_unsupported_protocol_before_loading(capsys, monkeypatch):
    from services import models

    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    assert main(["eval", "--model", "random:tiny-gpt", "--policy", "snapkv", "--policy-param", "budget=0.5",
                 "--workload", "passkey", "--compress", "streaming"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "natsbench eval: --compress: policy 'snapkv' does not support compress='streaming'; allowed: prompt, context"]
    assert main(["eval", "--model", "random:tiny-gpt", "--policy", "h2o", "--policy-param", "budget=0.5",
                 "--workload", "lm_text", "--compress", "context"]) == 2
    assert "has no question after its context" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_runs_a_context_cell_and_records_its_protocol(capsys):
    import json

    assert main(["eval", "--model", "random:tiny-llama", "--policy", "h2o", "--policy-param", "budget=0.3",
                 "--workload", "passkey", "--workload-param", "context_length=96", "--n", "1",
                 "--compress", "context"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["compress"] == "context" and record["status"] == "done"
    plain = {k: record[k] for k in ("model", "policy", "policy_params", "workload", "workload_params",
                                    "n_examples", "seed", "device", "dtype")}
    assert record["run_key"] == run_key({**plain, "compress": "context"}) != run_key(plain)
