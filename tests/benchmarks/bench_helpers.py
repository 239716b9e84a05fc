"""Helpers of the benchmark smoke tests: a script of benchmarks/ loaded as a module (benchmarks/ is no package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(script: str, name: str | None = None) -> ModuleType:
    """benchmarks/<script> imported under `name` (default: the script's stem), without running its main."""
    path = BENCHMARKS / script
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
