"""docker-compose.yml (+ the CPU override) validate with Debian's docker-compose and have the
services, health checks, loopback-only ports and GPU reservation the platform relies on."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml
from orch_helpers import REPO

# Missing docker-compose skips, except in CI (NATSBENCH_REQUIRE_SYSTEM_DEPS=1), where it fails.
if shutil.which("docker-compose") is None and os.environ.get("NATSBENCH_REQUIRE_SYSTEM_DEPS") == "1":
    raise RuntimeError("docker-compose is not installed and NATSBENCH_REQUIRE_SYSTEM_DEPS=1 (make test installs it)")
pytestmark = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                reason="docker-compose not installed (make test installs it)")


def compose(*files: str, args=("config",)) -> subprocess.CompletedProcess:
    cmd = ["docker-compose"] + [a for f in files for a in ("-f", f)] + list(args)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def merged(*files: str) -> dict:
    out = compose(*files)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.mark.parametrize("files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.cpu.yml")])
def test_compose_files_validate(files):
    out = compose(*files, args=("config", "-q"))
    assert out.returncode == 0, out.stderr


def _published(service: dict) -> list[str]:
    return [str(p).removesuffix("/tcp") if isinstance(p, str) else f"{p.get('host_ip')}:{p.get('published')}:{p.get('target')}"
            for p in service.get("ports", [])]


def test_gpu_compose_has_the_platform_services():
    cfg = merged("docker-compose.yml")
    svc = cfg["services"]
    assert {"postgres", "ray-head", "ray-worker", "sweep", "dashboard"} <= set(svc)
    assert "healthcheck" in svc["postgres"] and svc["postgres"]["volumes"]
    for name in ("ray-head", "ray-worker"):
        assert svc[name].get("shm_size")
    for name, service in svc.items():
        for port in _published(service):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert any(p.endswith(":8265") for p in _published(svc["ray-head"]))
    assert any(p.endswith(":8501") for p in _published(svc["dashboard"]))
    devices = svc["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "container_name" not in svc["ray-worker"], "a fixed name would forbid --scale"
    assert svc["sweep"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "configs/demo.yaml" in str(svc["sweep"]["command"])


def test_cpu_override_starts_no_gpu_worker():
    cfg = merged("docker-compose.yml", "docker-compose.cpu.yml")
    svc = cfg["services"]
    assert "gpu" in svc["ray-worker"].get("profiles", [])  # parked: not started by default
    cpu = svc["ray-worker-cpu"]
    assert "deploy" not in cpu and cpu.get("shm_size")
    default_services = [n for n, s in svc.items() if not s.get("profiles")]
    assert "ray-worker" not in default_services and "ray-worker-cpu" in default_services
