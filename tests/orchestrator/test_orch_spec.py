"""Sweep files: validation with field paths, grid expansion, run keys, `--dry-run` (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.plan import build_cells, decide, expand
from orchestrator.spec import SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]


def base_spec(**over):
    spec = {
        "name": "t",
        "models": [{"name": "random:tiny-gpt"}],
        "policies": [{"name": "full"}],
        "workloads": [{"name": "passkey", "params": {"context_length": [128, 256], "digits": [3, 4, 5]},
                       "examples": 2}],
        "seeds": [0, 1],
    }
    spec.update(over)
    return spec


def test_shipped_configs_validate():
    for name in ("smoke.yaml", "demo.yaml"):
        spec = load_spec(REPO / "configs" / name)
        assert spec.name and expand(spec)


def test_grid_expands_to_product_with_stable_distinct_keys():
    spec = parse_spec(base_spec())
    configs = expand(spec)
    # 2 context lengths x 3 digit counts x 1 policy x 2 seeds
    assert len(configs) == 2 * 3 * 2
    assert {(c["workload_params"]["context_length"], c["workload_params"]["digits"]) for c in configs} == {
        (n, d) for n in (128, 256) for d in (3, 4, 5)}
    cells = build_cells(spec)
    assert len({c.run_key for c in cells}) == 12
    again = build_cells(parse_spec(base_spec()))
    assert [c.run_key for c in cells] == [c.run_key for c in again]
    # model-major order, and the config has exactly the DESIGN.md keys
    assert set(configs[0]) == {"model", "policy", "policy_params", "compress", "workload", "workload_params",
                               "n_examples", "seed", "device", "dtype"}


def test_decide_skips_done_and_failed_unless_rerun():
    cells = build_cells(parse_spec(base_spec()))
    statuses = {cells[0].run_key: "done", cells[1].run_key: "failed", cells[2].run_key: "running"}
    plan = decide("t", cells, statuses, rerun_failed=False)
    assert len(plan.skipped) == 2 and len(plan.todo) == len(cells) - 2
    plan = decide("t", cells, statuses, rerun_failed=True)
    assert len(plan.skipped) == 1 and cells[1] in plan.todo and cells[2] in plan.todo


@pytest.mark.parametrize(
    "change, path, hint",
    [
        (lambda s: s["policies"].append({"name": "no_such_policy"}), "policies[1].name", "allowed: "),
        (lambda s: s["policies"].append({"name": "full", "params": {"budget": [0.5, -0.1]}}),
         "policies[1].params.budget[1]", "(0, 1]"),
        (lambda s: s["policies"].append({"name": "full", "params": {"budget": 0.5}}), "policies[1].params", "budget"),
        (lambda s: s.pop("workloads"), "workloads", "required"),
        (lambda s: s["workloads"][0].update(examples="many"), "workloads[0].examples", "integer"),
        (lambda s: s["models"][0].update(dtype="float8"), "models[0].dtype", "float32"),
        (lambda s: s["workloads"][0]["params"].update(nope=1), "workloads[0].params", "allowed"),
        (lambda s: s.update(resources={"workers": 0}), "resources.workers", "greater than"),
    ],
)
def test_bad_spec_exits_2_naming_the_field(tmp_path, capsys, change, path, hint):
    spec = base_spec()
    change(spec)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    db = tmp_path / "never.sqlite"
    assert main(["sweep", str(cfg), "--db", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and hint in err, err
    assert not db.exists(), "nothing may run (or touch the store) for a bad sweep file"


def test_unknown_policy_lists_allowed_names():
    spec = base_spec(policies=[{"name": "fulll"}])
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert any(p.startswith("policies[0].name:") and "'full'" not in p and "full" in p for p in info.value.problems)


def test_dry_run_prints_plan_without_touching_the_store(tmp_path, capsys):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(yaml.safe_dump(base_spec()))
    db = tmp_path / "dry.sqlite"
    assert main(["sweep", str(cfg), "--db", f"sqlite:///{db}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 cells, 12 to run, 0 skipped" in out
    assert out.count(" run ") == 12
    assert not db.exists()


def test_demo_comparison_table_averages_per_policy_budget_and_workload():
    from orchestrator.commands.demo import comparison_table

    def rec(policy, budget, ctx, acc, status="done"):
        return {"model": "m", "policy": policy, "policy_params": {} if budget is None else {"budget": budget},
                "workload": "passkey", "workload_params": {"context_length": ctx}, "status": status,
                "accuracy": acc, "kept_fraction": budget or 1.0, "kv_bytes_physical": 2048}

    records = [rec("full", None, 256, 1.0), rec("full", None, 256, 0.5), rec("full", None, 512, 0.0),
               rec("h2o", 0.1, 256, 0.25), rec("h2o", 0.1, 512, None, status="failed")]
    lines = comparison_table(records).splitlines()
    assert "passkey@256" in lines[0] and "passkey@512" in lines[0]
    full = next(line for line in lines if " full " in line).split()
    assert full[3:5] == ["0.75", "0.00"] and full[-1] == "2.0"
    h2o = next(line for line in lines if " h2o " in line).split()
    assert h2o[2:5] == ["0.1", "0.25", "x"]


def test_demo_says_plainly_when_no_model_exists(tmp_path, capsys, monkeypatch):
    from orchestrator.commands.demo import missing_models

    spec = parse_spec(base_spec(models=[{"name": "random:tiny-gpt"}, {"name": "no-such-model"}]))
    assert missing_models(spec) == ["no-such-model"]
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(base_spec(models=[{"name": "no-such-model"}])))
    monkeypatch.setenv("NO_DASHBOARD", "1")
    db = tmp_path / "demo.sqlite"
    assert main(["demo", "--config", str(cfg), "--db", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert "model(s) no-such-model not found" in err and not db.exists()


def test_policy_models_restricts_the_policy_to_those_models():
    spec = parse_spec(base_spec(
        models=[{"name": "random:tiny-gpt"}, {"name": "random:tiny-gpt-nats"}],
        policies=[{"name": "full"}, {"name": "nats", "models": ["random:tiny-gpt-nats"]}],
        seeds=[0]))
    pairs = {(c["model"], c["policy"]) for c in expand(spec)}
    assert pairs == {("random:tiny-gpt", "full"), ("random:tiny-gpt-nats", "full"),
                     ("random:tiny-gpt-nats", "nats")}


def test_policy_models_must_name_models_of_the_sweep():
    with pytest.raises(SpecError) as err:
        parse_spec(base_spec(policies=[{"name": "full", "models": ["tiny-bse"]}]))
    assert "policies[0].models[0]: unknown model 'tiny-bse'" in str(err.value)
    assert "random:tiny-gpt" in str(err.value)


def test_the_example_in_the_spec_docstring_is_a_valid_sweep():
    import textwrap

    from orchestrator import spec as spec_module

    doc = spec_module.__doc__
    start = doc.index("name: smoke")
    end = doc.index("\n", doc.index("resources:", start))
    parsed = parse_spec(yaml.safe_load(textwrap.dedent("    " + doc[start:end])))
    assert parsed.workloads[0].params == {"context_length": [256, 512]}
    # two context lengths x (full + two budgets + h2o under two protocols)
    assert len(build_cells(parsed)) == 2 * 5


def test_workload_models_restrict_the_cells_and_must_name_sweep_models():
    spec = parse_spec(base_spec(
        models=[{"name": "random:tiny-gpt"}, {"name": "random:tiny-gpt-nats"}],
        workloads=[{"name": "passkey", "params": {"context_length": 128}, "examples": 2,
                    "models": ["random:tiny-gpt"]},
                   {"name": "lm_text", "params": {"context_length": 128}, "examples": 1}],
        seeds=[0]))
    pairs = {(c["model"], c["workload"]) for c in expand(spec)}
    assert pairs == {("random:tiny-gpt", "passkey"), ("random:tiny-gpt", "lm_text"),
                     ("random:tiny-gpt-nats", "lm_text")}
    with pytest.raises(SpecError) as err:
        parse_spec(base_spec(workloads=[{"name": "passkey", "models": ["nope"]}]))
    assert "workloads[0].models[0]: unknown model 'nope'" in str(err.value)
