"""The shipped reference model `tiny-base` through `natsbench eval` (issue #5).

Skipped ONLY while the folder `models/tiny-base` is absent (it is trained and committed by
another part of the project); once it exists this test must pass.
"""

import json

import pytest

from orchestrator.cli import main
from services.paths import MODELS_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODELS_DIR / "tiny-base").is_dir(), reason="models/tiny-base is not shipped yet"),
]


def test_tiny_base_full_solves_passkey_at_1024(capsys):
    code = main(["eval", "--model", "tiny-base", "--policy", "full", "--workload", "passkey",
                 "--workload-param", "context_length=1024", "--n", "20", "--seed", "0"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and record["status"] == "done", record["error"]
    assert record["n_examples"] == 20 and record["kept_fraction"] == pytest.approx(1.0)
    assert record["accuracy"] >= 0.9, record["accuracy"]


def test_tiny_base_full_matches_keys_in_niah_multikey_at_512(capsys):
    """Four needles, one asked: the model must match the key, not copy any needle (chance 0.25)."""
    code = main(["eval", "--model", "tiny-base", "--policy", "full", "--workload", "niah_multikey",
                 "--workload-param", "context_length=512", "--n", "20", "--seed", "0"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and record["status"] == "done", record["error"]
    assert record["accuracy"] >= 0.8, record["accuracy"]
