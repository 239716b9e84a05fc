"""`natsbench submit` against a separate local `ray start --head` on 127.0.0.1: the smoke sweep
runs as a Ray Job to the end and its rows land in the store; the submission id is
deterministic; --status / --logs answer for the job."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from orch_helpers import REPO

from orchestrator.spec import load_spec
from orchestrator.submit import submission_id
from services.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head of its own (`ray start --head --block`), stopped by signalling that process
    only (never `ray stop`, which would stop every Ray cluster on the machine)."""
    temp_dir = tempfile.mkdtemp(prefix="rayh")  # short: Ray's socket paths must stay < 108 chars
    dash = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_bin, "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=2",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 180
    import urllib.request

    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited early"
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        pytest.fail("the Ray head's job API did not come up in 180 s")
    yield address, env
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_submit_runs_the_smoke_sweep_as_a_ray_job(ray_head, tmp_path):
    address, env = ray_head
    db = f"sqlite:///{tmp_path / 'submit.sqlite'}"
    cli = [sys.executable, "-m", "orchestrator.cli", "submit"]
    out = subprocess.run(cli + ["configs/smoke.yaml", "--address", address, "--db", db, "--wait"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    spec = load_spec(REPO / "configs" / "smoke.yaml")
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines[0] == submission_id(spec) and lines[-1] == "SUCCEEDED"
    rows = Store(db).runs(spec.name)
    assert rows and all(r["status"] == "done" for r in rows)
    assert len({r["run_key"] for r in rows}) == len(rows)
    # the same id answers --status and --logs; its driver printed the JSON summary
    status = subprocess.run(cli + ["--status", lines[0], "--address", address], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.stdout.strip() == "SUCCEEDED"
    logs = subprocess.run(cli + ["--logs", lines[0], "--address", address], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert f'"sweep": "{spec.name}"' in logs.stdout and '"executed": ' in logs.stdout


def test_the_fetched_real_models_stay_out_of_the_job_upload():
    from orchestrator.submit import WORKING_DIR_EXCLUDES, working_dir_excludes
    from services.model_registry import FETCHABLE

    excludes = working_dir_excludes()
    assert excludes[:len(WORKING_DIR_EXCLUDES)] == WORKING_DIR_EXCLUDES
    assert {f"models/{name}" for name in FETCHABLE} <= set(excludes)
    assert "models" not in excludes  # the small shipped models travel with the job
