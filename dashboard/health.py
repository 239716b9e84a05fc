"""Starting a served dashboard and waiting for it (the browser tests and scripts/dashboard_screenshot.py):
a free loopback port, and a wait on Streamlit's health endpoint. Standard library only."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, timeout_s: float) -> None:
    """Return once the dashboard `proc` serves on 127.0.0.1:`port` answers "ok" on /_stcore/health;
    RuntimeError when it exits first or does not answer within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"natsbench dashboard exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the dashboard did not answer on 127.0.0.1:{port} within {timeout_s} s")
