"""Where and with what a cell ran: the run record's `environment` (`environment_info`)."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from pathlib import Path

from services.paths import REPO_ROOT


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    env = os.environ.get("NATSBENCH_GIT_COMMIT")
    if env:
        return env
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict:
    from importlib import metadata

    versions = {}
    for pkg in ("natsbench", "torch", "transformers", "numpy", "triton"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def environment_info(device: str = "cpu") -> dict:
    """Where and with what a cell ran: git commit (`-dirty` with local changes; env
    NATSBENCH_GIT_COMMIT overrides, e.g. inside a Ray job without .git), package versions,
    device name, host, CPU threads."""
    import torch

    versions = dict(_package_versions())
    if str(device).startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = _cpu_name()
    return {"git_commit": _git_commit(), "python": platform.python_version(), "packages": versions,
            "device": str(device), "device_name": device_name, "host": socket.gethostname(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
