"""Contracts written once: the supported Hugging Face families are one tuple
(`nats_model.models.families`), which the engine, the scorers and the GGUF import read."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def family_lists() -> list[str]:
    """Every list / tuple / set literal in the project's code that names two or more HF families."""
    from nats_model.models.families import SUPPORTED_MODEL_TYPES

    found = []
    for pkg in ("nats_model", "services", "orchestrator", "dashboard", "benchmarks", "scripts"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Tuple | ast.List | ast.Set):
                    names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                    if len(names & set(SUPPORTED_MODEL_TYPES)) >= 2:
                        found.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    return found


def test_one_family_list():
    assert family_lists() == ["nats_model/models/families.py:5"]


def test_readers_share_it():
    from nats_model.models import bridge, families, hf_nats
    from services import model_import

    assert bridge.SUPPORTED_MODEL_TYPES is families.SUPPORTED_MODEL_TYPES
    assert hf_nats.SUPPORTED_MODEL_TYPES is families.SUPPORTED_MODEL_TYPES
    assert model_import.SUPPORTED_ARCHITECTURES is families.SUPPORTED_MODEL_TYPES


def test_run_config_columns_come_from_the_declaration():
    from sqlalchemy import JSON, Float, Integer, String

    from services.declaration import CONFIG_KEYS, RUN_CONFIG_COLUMNS
    from services.store.models import Run
    from services.store.records import RUN_FIELDS, config_columns

    table = Run.__table__
    kinds = {"str": String, "int": Integer, "float": Float, "dict": JSON}
    for field in RUN_CONFIG_COLUMNS:
        column = table.columns[field.name]
        assert isinstance(column.type, kinds[field.type]), field.name
        assert column.nullable == field.nullable, field.name
        if field.type == "str":
            assert column.type.length == field.length, field.name
    assert {f.name for f in RUN_CONFIG_COLUMNS} == {*CONFIG_KEYS, "budget", "compress"}
    assert [f for f in RUN_FIELDS if f in {c.name for c in RUN_CONFIG_COLUMNS}] == [c.name for c in RUN_CONFIG_COLUMNS]
    config = {"model": "random:tiny-gpt", "policy": "h2o", "policy_params": {"budget": 0.25}, "workload": "passkey",
              "workload_params": {"context_length": 256}, "n_examples": 2, "seed": 0, "device": "cpu",
              "dtype": "float32"}
    cols = config_columns(config)
    assert cols["budget"] == 0.25 and cols["compress"] == "streaming" and cols["device"] == "cpu"
    assert set(cols) == {"run_key", "config", "code_version", *(c.name for c in RUN_CONFIG_COLUMNS)}
