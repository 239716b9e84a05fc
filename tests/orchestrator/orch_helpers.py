"""Shared constants and helpers of the orchestrator tests (a uniquely named module: several
test folders have a `conftest.py`, so tests must not import `conftest` by name)."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FAKE_RUNNER = "orch_fake_runner"


def fake_calls(log_path: Path, model: str) -> list[dict]:
    """The cells the fake runner executed for `model` (one dict per call, in order)."""
    if not log_path.exists():
        return []
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["model"] == model]
