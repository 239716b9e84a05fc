"""`PolicyWorker`: the Ray actor that holds one model on one device and runs cells.

The actor loads a model once (and again only when handed a cell of another model), runs a
cell through the cell runner (`services.evaluation` by default: workload -> policy ->
generate -> metrics) and returns a plain record dict. Nothing a cell does can crash the
actor: an exception, a bad parameter or an out-of-memory error comes back as a record with
`status="failed"` and the error text. The runner is a module name with
`load_model(name_or_path, device, dtype)` and `run_cell(handle, config) -> record`, so tests can
plug in a controllable one (env `NATSBENCH_CELL_RUNNER`, read by the driver).
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time
import traceback
from typing import Any

import ray

from services.declaration import FAILED

DEFAULT_RUNNER = "services.evaluation"
RUNNER_ENV = "NATSBENCH_CELL_RUNNER"


def failed_record(config: dict[str, Any], error: str) -> dict[str, Any]:
    """A record for a cell that produced no measurement: the config plus status and error."""
    record = dict(config)
    record.update(status=FAILED, error=error, extras={})
    return record


class CellWorker:
    """Holds at most one loaded model and runs cells on it; the plain-Python body of
    `PolicyWorker` (usable without Ray, e.g. in tests and benchmarks)."""

    def __init__(self, runner: str = DEFAULT_RUNNER, threads: int | None = None) -> None:
        self.runner_name = runner
        self._runner: Any = None
        self._model_key: tuple[str, str, str, str | None] | None = None
        self._handle: Any = None
        self.threads = max(1, int(threads)) if threads else None

    def _ensure_runner(self) -> Any:
        if self._runner is None:
            self._runner = importlib.import_module(self.runner_name)
        return self._runner

    def info(self) -> dict[str, Any]:
        """Where this worker runs and which model it holds."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "model": self._model_key}

    def load(self, model: str, device: str = "cpu", dtype: str = "float32", adapter: str | None = None) -> float:
        """Load `model` (with its NAtS `adapter`, when a cell names one) unless it is already held;
        returns the seconds spent loading."""
        key = (model, device, dtype, adapter)
        if key == self._model_key:
            return 0.0
        t0 = time.perf_counter()
        self._handle, self._model_key = None, None  # drop the old model before loading the next
        runner = self._ensure_runner()
        if self.threads and "torch" in sys.modules:  # only when the runner uses torch at all
            sys.modules["torch"].set_num_threads(self.threads)
        # a runner without adapter support still serves every cell that names none
        extra = {"adapter": adapter} if adapter is not None else {}
        self._handle = runner.load_model(model, device=device, dtype=dtype, **extra)
        self._model_key = key
        return time.perf_counter() - t0

    def run(self, config: dict[str, Any]) -> dict[str, Any]:
        """Run one cell and return its record; never raises for a failure inside the cell."""
        t0 = time.perf_counter()
        load_s = 0.0
        try:
            load_s = self.load(config["model"], config.get("device", "cpu"), config.get("dtype", "float32"),
                               config.get("adapter"))
            record = self._runner.run_cell(self._handle, config)
            if not isinstance(record, dict):
                raise TypeError(f"run_cell returned {type(record).__name__}, expected a dict record")
        except BaseException as exc:  # noqa: BLE001 - a cell must never take the worker down
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if "out of memory" in str(exc).lower():
                self._release_memory()
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            record = failed_record(config, f"{detail}\n{traceback.format_exc(limit=6)}")
        extras = dict(record.get("extras") or {})
        extras["worker"] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "load_s": round(load_s, 6),
            "cell_s": round(time.perf_counter() - t0, 6),
        }
        record["extras"] = extras
        return record

    def _release_memory(self) -> None:
        self._handle, self._model_key = None, None
        try:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort only
            pass


# The Ray actor. One task at a time (max_concurrency 1): the driver keeps one cell in flight.
PolicyWorker = ray.remote(max_restarts=0, max_task_retries=0)(CellWorker)
