"""Submit a sweep as a Ray Job: the repo as working_dir, a deterministic submission id.

The job's entrypoint is `natsbench sweep` on the cluster (`--address auto`), so a submitted
sweep plans, skips done cells and stores exactly like a local one. The submission id is
`natsbench-<sweep>-<first 10 hex of the spec hash>`; when a job with that id is still pending
or running, `submit` reports it instead of starting a second driver, and when it has finished
(succeeded, failed or stopped) the new job gets the first free suffix `-r2`, `-r3`, ... (the
sweep itself resumes from the store, so a resubmission runs only what is not done).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parent.parent
# Never uploaded: the venv, caches, local results and databases. models/ is kept (small, needed).
WORKING_DIR_EXCLUDES = [
    ".venv", ".git", "results", "runs", "artifacts", "test-artifacts", "build", "dist",
    "**/__pycache__", "**/*.pyc", ".pytest_cache", ".ruff_cache", "*.egg-info",
    "*.sqlite", "*.sqlite-wal", "*.sqlite-shm", "*.db", "docker",
]


def working_dir_excludes() -> list[str]:
    """WORKING_DIR_EXCLUDES plus the folders of the fetched real models (models/<name> of every
    `services.model_registry.FETCHABLE` entry): their weights (SmolLM2: 270 MB) are past what a Ray job
    may upload (100 MB), so a node that runs such a model has it from `natsbench model fetch` or its
    image, as the compose workers do; the small shipped models still travel with the job."""
    from services.model_registry import FETCHABLE

    return [*WORKING_DIR_EXCLUDES, *(f"models/{name}" for name in FETCHABLE)]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
PASS_ENV = ("NATSBENCH_CELL_RUNNER",)


def submission_id(spec: Any) -> str:
    """`natsbench-<sweep name>-<spec hash prefix>`: the same sweep file gives the same id."""
    return f"natsbench-{spec.name}-{spec.digest()[:10]}"


def absolute_db_url(url: str, base: Path | None = None) -> str:
    """Make a relative SQLite path absolute (against `base`, default cwd): the job runs in a
    copy of the repo, so `sqlite:///results/x.sqlite` would otherwise land in that copy."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        path = (base or Path.cwd()) / url[len(prefix):]
        return prefix + str(path.resolve())
    return url


def is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def config_in_repo(config: str | Path) -> str:
    """The config path relative to the repo (the job's working_dir); ValueError if outside."""
    path = Path(config).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        raise ValueError(f"config {str(config)!r} is outside the repository {REPO_ROOT}; a Ray Job "
                         "uploads only the repository, so put the sweep file under configs/") from None


def _client(address: str) -> Any:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # must match `ray start` (ENVIRONMENT.md)
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _status(client: Any, job_id: str) -> str | None:
    try:
        status = client.get_job_status(job_id)
    except RuntimeError:  # no such job
        return None
    return str(getattr(status, "value", status))


def submit(config: str | Path, spec: Any, address: str, db_url: str, python: str | None = None,
           workers: int | None = None) -> tuple[str, bool]:
    """Submit the sweep; returns (job id, True if a new job was started)."""
    rel_config = config_in_repo(config)
    client = _client(address)
    base = submission_id(spec)
    job_id, n = base, 1
    while (status := _status(client, job_id)) is not None:
        if status not in TERMINAL:
            return job_id, False
        n += 1
        job_id = f"{base}-r{n}"
    python = python or (sys.executable if is_loopback(address) else "python")
    args = [python, "-m", "orchestrator.cli", "sweep", rel_config, "--db", absolute_db_url(db_url),
            "--address", "auto", "--no-progress"]
    if workers:
        args += ["--workers", str(workers)]
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    client.submit_job(
        entrypoint=shlex.join(args),
        submission_id=job_id,
        runtime_env={"working_dir": str(REPO_ROOT), "excludes": working_dir_excludes(), "env_vars": env},
        metadata={"sweep": spec.name, "spec_sha256": spec.digest()},
    )
    return job_id, True


def job_status(address: str, job_id: str) -> str | None:
    """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) or None if unknown."""
    return _status(_client(address), job_id)


def job_logs(address: str, job_id: str) -> str:
    """Everything the job's driver printed so far."""
    return _client(address).get_job_logs(job_id)


def wait(address: str, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Block until the job ends (or `timeout_s` passes); returns the last status."""
    client = _client(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = _status(client, job_id) or "UNKNOWN"
        if status in TERMINAL or status == "UNKNOWN" or (deadline and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)
