"""Run statuses are declared once (`services.declaration`: PENDING, RUNNING, DONE, FAILED) and the
code names them by those constants: no comparison, `status=` argument or `[...]["status"] = ...`
assignment with a status string literal in the project's modules. Migrations are exempt: they are
history and must not change when a status is renamed."""

from __future__ import annotations

import ast
from pathlib import Path

from services.declaration import DONE, FAILED, PENDING, RUN_STATUSES, RUNNING

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("nats_model", "services", "orchestrator", "dashboard", "benchmarks", "scripts")


def _status_literals(tree: ast.AST) -> list[int]:
    def is_status(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in RUN_STATUSES

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op in operands:
                if is_status(op) or (isinstance(op, ast.List | ast.Tuple | ast.Set) and any(map(is_status, op.elts))):
                    lines.append(node.lineno)
        elif isinstance(node, ast.keyword) and node.arg == "status" and is_status(node.value):
            lines.append(node.value.lineno)
        elif isinstance(node, ast.Assign) and is_status(node.value):
            for target in node.targets:
                if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant) \
                        and target.slice.value == "status":
                    lines.append(node.lineno)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "status" and is_status(value):
                    lines.append(value.lineno)
    return sorted(lines)


def test_the_constants_are_the_declared_statuses():
    assert (PENDING, RUNNING, DONE, FAILED) == RUN_STATUSES
    assert len(set(RUN_STATUSES)) == 4


def test_the_checker_finds_each_kind_of_literal():
    code = 'a == "done"\nf(status="failed")\nr["status"] = "pending"\nx in ("running",)\n{"status": "done"}\n'
    assert _status_literals(ast.parse(code)) == [1, 2, 3, 4, 5]
    assert _status_literals(ast.parse('a == DONE\nf(status=FAILED)\nprint("done")\n')) == []


def test_no_status_string_literal_outside_the_declaration():
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO)
            if "migrations" in rel.parts or rel == Path("services/declaration.py"):
                continue
            found += [f"{rel}:{line}" for line in _status_literals(ast.parse(path.read_text(), str(rel)))]
    assert not found, f"status string literals (use services.declaration's constants): {found}"
