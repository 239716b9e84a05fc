"""Golden outputs: the committed exact outputs of a fixed set of cells must match what the code
computes now, under the `CODE_VERSION` that produced them.

If this fails after an intended change of what cells compute: bump `CODE_VERSION` in
services/store/keys.py and run `.venv/bin/python scripts/regen_golden.py` (commit both). If the
change was not intended (a refactor, a faster kernel), the differences listed are a bug.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import golden_cells
import pytest

from services.store import keys

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def golden() -> dict:
    return golden_cells.load()


def _how_to(reason: str) -> str:
    return (f"{reason}\nIf the change is intended: bump CODE_VERSION in services/store/keys.py (now "
            f"{keys.CODE_VERSION!r}), then run `{golden_cells.REGEN_COMMAND}` and commit both. If it is not "
            "intended, the lines above are the regression.")


def test_golden_file_was_made_by_this_code_version(golden: dict) -> None:
    if golden["code_version"] != keys.CODE_VERSION:
        pytest.fail(f"CODE_VERSION is {keys.CODE_VERSION!r} but tests/golden/golden_outputs.json was made with "
                    f"{golden['code_version']!r}: regenerate it with `{golden_cells.REGEN_COMMAND}` and commit it")


def test_golden_set_covers_every_policy_on_two_workloads(golden: dict) -> None:
    from nats_model import policies

    labels = set(golden["cells"])
    assert labels == {golden_cells.label(c) for c in golden_cells.cell_configs()}
    assert {c["policy"] for c in golden_cells.cell_configs()} == set(policies.available())
    for model in golden_cells.MODELS:
        for workload, _ in golden_cells.WORKLOADS:
            assert f"{model} | full | {workload}" in labels
    # every golden cell ran (a failed cell would only pin an error message)
    assert all(o["status"] == "done" for o in golden["cells"].values())


def test_outputs_match_the_golden_file(golden: dict) -> None:
    actual = golden_cells.compute()
    problems = golden_cells.compare(golden["cells"], actual)
    if problems:
        shown = "\n".join(problems[:30]) + (f"\n... {len(problems) - 30} more" if len(problems) > 30 else "")
        if golden["code_version"] == keys.CODE_VERSION:
            pytest.fail(_how_to(f"{len(problems)} golden outputs differ while CODE_VERSION stayed "
                                f"{keys.CODE_VERSION!r}:\n{shown}"))
        pytest.fail(f"{len(problems)} golden outputs differ and CODE_VERSION changed: regenerate with "
                    f"`{golden_cells.REGEN_COMMAND}`:\n{shown}")


# ---- the comparison itself must see every real change


def _some_cell(golden: dict, workload: str, policy: str = "h2o") -> str:
    return next(k for k in golden["cells"] if k.endswith(f"| {policy} | {workload}") and "tiny-base" in k)


def test_compare_sees_one_changed_token(golden: dict) -> None:
    name = _some_cell(golden, "passkey")
    changed = copy.deepcopy(golden["cells"])
    changed[name]["examples"][0]["tokens"][-1] += 1
    problems = golden_cells.compare(golden["cells"], changed)
    assert problems == [f"{name}.examples[0].tokens[{len(changed[name]['examples'][0]['tokens']) - 1}]: "
                        f"{changed[name]['examples'][0]['tokens'][-1]}, was "
                        f"{golden['cells'][name]['examples'][0]['tokens'][-1]}"]


def test_compare_sees_one_kept_count_and_a_small_nll_change(golden: dict) -> None:
    name = _some_cell(golden, "lm_text")
    changed = copy.deepcopy(golden["cells"])
    changed[name]["examples"][1]["kept_per_layer_head"][2][3] -= 1
    changed[name]["examples"][0]["nll"] += 2 * golden_cells.NLL_ATOL
    problems = golden_cells.compare(golden["cells"], changed)
    assert len(problems) == 2
    assert any(".examples[1].kept_per_layer_head[2][3]" in p for p in problems)
    assert any(".examples[0].nll" in p for p in problems)
    # within the tolerance the NLL is the same output
    ok = copy.deepcopy(golden["cells"])
    ok[name]["examples"][0]["nll"] += golden_cells.NLL_ATOL / 10
    assert golden_cells.compare(golden["cells"], ok) == []


def test_compare_is_exact_for_accuracy_bytes_and_types(golden: dict) -> None:
    name = _some_cell(golden, "passkey", policy="full")
    for field, value in (("accuracy", 0.5), ("kv_bytes_physical", 1), ("status", "failed")):
        changed = copy.deepcopy(golden["cells"])
        changed[name][field] = value
        assert len(golden_cells.compare(golden["cells"], changed)) == 1, field
    changed = copy.deepcopy(golden["cells"])
    changed[name]["examples"][0]["tokens"] = [float(t) for t in changed[name]["examples"][0]["tokens"]]
    assert golden_cells.compare(golden["cells"], changed)  # 3.0 is not the token 3
    changed = copy.deepcopy(golden["cells"])
    del changed[name]
    assert golden_cells.compare(golden["cells"], changed) == [f"{name}: cell no longer in the golden set"]


def test_regen_script_refuses_changed_outputs_under_the_same_code_version(golden: dict, monkeypatch,
                                                                           tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("regen_golden", REPO / "scripts" / "regen_golden.py")
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    target = tmp_path / "golden_outputs.json"
    target.write_text(golden_cells.GOLDEN_FILE.read_text())
    monkeypatch.setattr(golden_cells, "GOLDEN_FILE", target)
    changed = copy.deepcopy(golden["cells"])
    name = _some_cell(golden, "passkey")
    changed[name]["examples"][0]["prediction"] = "something else"
    monkeypatch.setattr(golden_cells, "compute", lambda: changed)
    monkeypatch.setattr(regen, "CODE_VERSION", golden["code_version"])
    before = target.read_text()
    assert regen.main([]) == 2
    assert target.read_text() == before
    assert "bump CODE_VERSION" in capsys.readouterr().err
    # after a bump it writes the new outputs with the new version
    monkeypatch.setattr(regen, "CODE_VERSION", golden["code_version"] + "-next")
    assert regen.main([]) == 0
    written = golden_cells.load()
    assert written["code_version"] == golden["code_version"] + "-next"
    assert written["cells"][name]["examples"][0]["prediction"] == "something else"
