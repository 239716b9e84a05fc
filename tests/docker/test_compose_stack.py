"""`docker compose up` for real: build the images offline, bring the stack up, run the smoke sweep.

What runs (every step reuses what exists: the base image, the wheels, images of the same inputs):
1. a docker engine: Debian's `docker.io` (+ `docker-compose` v1, `mmdebstrap`) installed when missing
   and `dockerd` started in the background as root when none answers (stopped again at the end);
2. the base image `natsbench-base:bookworm`: Debian bookworm with python3 from `mmdebstrap` (no
   image registry is reachable); the wheelhouse (scripts/docker_wheelhouse.py: the CPU torch from the
   local wheel cache + every dependency), kept under ~/.cache/natsbench/docker-wheelhouse and
   hard-linked into docker/wheelhouse/; the images `natsbench:compose-test-<key>` (docker/Dockerfile,
   OFFLINE=1, built with `--network none`) and `natsbench-postgres:test-<key>` (docker/postgres.Dockerfile:
   Debian's postgresql, apt through host networking during the build), the key a digest of every
   input of the build (docker_images.py): an image whose tag exists is used as it is;
3. the stack: `docker-compose -f docker-compose.yml -f docker-compose.cpu.yml -f
   tests/docker/compose.test.yml -p PROJECT up -d --no-build [--scale ray-worker-cpu=2]` (the
   v1 binary: Debian bookworm has no `docker compose` v2 plugin; the files are the ones
   `docker compose` reads), three times: one worker, two workers, two workers with the one running
   the sweep's actor killed mid-sweep. Each time: PostgreSQL healthy, the Ray head up with every
   worker joined, the sweep service ran `natsbench db upgrade` and the smoke sweep as a Ray Job
   that SUCCEEDED, every cell `done` exactly once in PostgreSQL (`natsbench results` in a container
   on the compose network), the dashboard healthy (and, once, its page in headless Chromium lists
   the sweep), every published port on 127.0.0.1; `down -v` leaves no container, network or volume.

A missing docker (or one that cannot be installed) skips, except with NATSBENCH_REQUIRE_SYSTEM_DEPS=1
(CI), where it fails. Heavy: image builds and stacks run under /tmp/natsbench-heavy.lock only when
the caller takes it; the test itself does not lock.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import docker_images
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TEST_OVERRIDE = "tests/docker/compose.test.yml"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cpu.yml", TEST_OVERRIDE)
BASE_IMAGE = "natsbench-base:bookworm"
# Tagged <repository>:<prefix>-<digest of the build inputs> (docker_images.image_key).
APP_REPO, VENV_REPO, PG_REPO = "natsbench", "natsbench-venv", "natsbench-postgres"
APP_DOCKERFILE, PG_DOCKERFILE = "docker/Dockerfile", "docker/postgres.Dockerfile"
WHEELHOUSE = REPO / "docker" / "wheelhouse"
SWEEP = "smoke"  # configs/smoke.yaml: 2 workloads x 3 policies on random:tiny-gpt = 6 cells
SMOKE_CELLS = 6
REQUIRED = os.environ.get("NATSBENCH_REQUIRE_SYSTEM_DEPS") == "1"
# Stay on the compose network and the loopback: Ray processes listen on the container's address.
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--window-size=1400,900")


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason}; NATSBENCH_REQUIRE_SYSTEM_DEPS=1")
    pytest.skip(reason)


def run(cmd: list[str], *, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion carries its output (the only clue in a CI log)."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def _docker_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=60).returncode == 0


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        _unavailable(f"{' '.join(packages)} missing and not root (apt-get install -y {' '.join(packages)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env, timeout=300)
    run(["apt-get", "install", "-y", "-qq", *packages], env=env, timeout=600)


@pytest.fixture(scope="module")
def docker_engine():
    """A docker daemon that answers (started here when none does) and the docker-compose binary."""
    missing = [pkg for pkg, binary in (("docker.io", "dockerd"), ("docker-compose", "docker-compose"),
                                       ("mmdebstrap", "mmdebstrap"))
               if shutil.which(binary) is None and not os.access(f"/usr/sbin/{binary}", os.X_OK)]
    if missing:
        _apt_install(missing)
    started = None
    if not _docker_answers():
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if os.geteuid() != 0:
            _unavailable("no docker daemon answers and dockerd needs root")
        log = tempfile.NamedTemporaryFile("w", prefix="natsbench-dockerd-", suffix=".log", delete=False)
        started = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _docker_answers():
            if started.poll() is not None or time.monotonic() > deadline:
                _unavailable(f"dockerd did not start (exit {started.poll()}); see {log.name}")
            time.sleep(1)
    yield
    if started is not None:
        started.terminate()  # stops its containers and containerd with it
        try:
            started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait()


def _image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def images(docker_engine) -> dict[str, str]:
    """The base (mmdebstrap, once), the wheelhouse (once, under ~/.cache/natsbench) and the two images,
    each tagged by the digest of its build inputs (docker_images.image_key): reused when that tag exists,
    else built on docker's layer cache. {"app": image, "postgres": image} for compose.test.yml."""
    t0 = time.monotonic()
    if not _image_exists(BASE_IMAGE):
        # minbase + python3 and its venv module: what docker/Dockerfile needs from a base.
        # Its log goes to a file: a pipe nobody reads while `docker import` runs could fill and stall it.
        with tempfile.TemporaryFile("w+") as log:
            mm = subprocess.Popen(["mmdebstrap", "--quiet", "--variant=minbase",
                                   "--include=python3,python3-venv,python3-pip,ca-certificates", "bookworm", "-"],
                                  stdout=subprocess.PIPE, stderr=log)
            imp = run(["docker", "import", "-", BASE_IMAGE], stdin=mm.stdout, timeout=900, check=False)
            mm.stdout.close()
            code = mm.wait()
            log.seek(0)
            assert code == 0 and imp.returncode == 0, f"base image: {log.read()[-3000:]}\n{imp.stderr}"
    base_id = run(["docker", "image", "inspect", "-f", "{{.Id}}", BASE_IMAGE]).stdout.strip()
    # The wheels live once under the cache folder (a fresh clone's docker/wheelhouse/ is empty) and are
    # hard-linked into the build context; filled again only when pyproject's dependencies change.
    cached = docker_images.cache_dir() / "docker-wheelhouse"
    if not list(cached.glob("torch-2.13.0*.whl")) or _wheelhouse_stale(cached):
        run([sys.executable, str(REPO / "scripts" / "docker_wheelhouse.py"), str(cached)], timeout=900)
        (cached / ".pyproject.stamp").write_text(_deps_fingerprint())
    docker_images.link_wheels(cached, WHEELHOUSE)
    built = []
    pg_args = {"BASE_IMAGE": BASE_IMAGE}
    pg = f"{PG_REPO}:test-{docker_images.image_key(REPO, PG_DOCKERFILE, base_id, pg_args)}"
    if not _image_exists(pg):
        # PostgreSQL from Debian's package: apt-get inside the build needs the mirror (host network).
        run(["docker", "build", "-q", "--network", "host", "-f", PG_DOCKERFILE, *_build_args(pg_args),
             "-t", pg, "."], cwd=REPO, timeout=900)
        built.append(pg)
    app_args = {"BASE_IMAGE": BASE_IMAGE, "OFFLINE": "1"}
    key = docker_images.image_key(REPO, APP_DOCKERFILE, base_id, app_args)
    app, venv = f"{APP_REPO}:compose-test-{key}", f"{VENV_REPO}:compose-test-{key}"
    if not _image_exists(app):
        # The project image needs no network at all: every wheel comes from the wheelhouse. Its first stage
        # gets a tag of its own, so that pruning dangling images never drops the virtualenv layers a
        # source change would otherwise rebuild (docker's cache reuses them for the second command).
        for target, tag in (("--target=venv", venv), (None, app)):
            run(["docker", "build", "-q", "--network", "none", "-f", APP_DOCKERFILE, *_build_args(app_args),
                 *([target] if target else []), "-t", tag, "."], cwd=REPO, timeout=1200)
        built.append(app)
    if built:
        _drop_superseded({APP_REPO: app, VENV_REPO: venv, PG_REPO: pg})
    print(f"images ready in {time.monotonic() - t0:.0f} s: {app}, {pg} ({'built ' + ', '.join(built) if built else 'reused'})")
    return {"app": app, "postgres": pg}


def _build_args(args: dict[str, str]) -> list[str]:
    return [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]


KEEP_SUPERSEDED = 2  # per repository: earlier keys stay for a checkout or two that still builds them


def _drop_superseded(current: dict[str, str]) -> None:
    """Untag all but the newest KEEP_SUPERSEDED earlier keys of each test image (and the unkeyed tags the
    test used before), then prune the dangling images the Dockerfiles label."""
    for repo, keep in current.items():
        out = run(["docker", "image", "ls", repo, "--format", "{{.CreatedAt}}\t{{.Repository}}:{{.Tag}}"])
        tags = sorted((line.split("\t") for line in out.stdout.splitlines() if line.strip()), reverse=True)
        prefix = keep.rsplit("-", 1)[0] + "-"
        older = [tag for _, tag in tags if tag != keep and tag.startswith(prefix)]
        legacy = [tag for _, tag in tags if tag in (f"{APP_REPO}:compose-test", f"{PG_REPO}:test")]
        drop = older[KEEP_SUPERSEDED:] + legacy
        if drop:
            run(["docker", "image", "rm", *drop], timeout=300, check=False)
    run(["docker", "image", "prune", "-f", "--filter", "label=org.natsbench.image"], timeout=300)


def _deps_fingerprint() -> str:
    import hashlib
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return hashlib.sha256(json.dumps(project["dependencies"]).encode()).hexdigest()


def _wheelhouse_stale(folder: Path) -> bool:
    stamp = folder / ".pyproject.stamp"
    return not stamp.exists() or stamp.read_text() != _deps_fingerprint()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One compose project (a random name, free host ports) and the commands the test runs on it."""

    def __init__(self, workers: int, sweep_workers: int, images: dict[str, str]) -> None:
        self.project = f"nbtest{secrets.token_hex(4)}"
        self.workers = workers
        self.ports = {"NATSBENCH_PG_PORT": _free_port(), "NATSBENCH_RAY_DASHBOARD_PORT": _free_port(),
                      "NATSBENCH_DASHBOARD_PORT": _free_port()}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()},
                    "NATSBENCH_SWEEP_WORKERS": str(sweep_workers), "COMPOSE_PROJECT_NAME": self.project,
                    "NATSBENCH_TEST_IMAGE": images["app"], "NATSBENCH_TEST_PG_IMAGE": images["postgres"]}
        self.t0 = time.monotonic()

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        files = [a for f in COMPOSE_FILES for a in ("-f", f)]
        return run(["docker-compose", *files, "-p", self.project, *args], cwd=REPO, env=self.env,
                   timeout=timeout, check=check)

    def up(self) -> None:
        # The README's command, plus the test override, the built images and the worker count.
        self.compose("up", "-d", "--no-build", "--scale", f"ray-worker-cpu={self.workers}", timeout=900)

    def container(self, service: str) -> list[str]:
        out = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
                   "--filter", f"label=com.docker.compose.service={service}"])
        return out.stdout.split()

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {kind: run(cmd + ["--filter", label]).stdout.split()
                for kind, cmd in (("containers", ["docker", "ps", "-aq"]),
                                  ("networks", ["docker", "network", "ls", "-q"]),
                                  ("volumes", ["docker", "volume", "ls", "-q"]))}

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=300, check=False)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False, timeout=120).stdout

    def wait_sweep(self, timeout_s: float = 480) -> int:
        (cid,) = self.container("sweep")
        return int(run(["docker", "wait", cid], timeout=timeout_s).stdout.strip())

    def ray_nodes(self) -> list[dict]:
        """The alive Ray nodes (from a driver inside the head container): CPUs and whether head."""
        code = ("import json, ray; ray.init(address='auto', log_to_driver=False); "
                "print('NODES=' + json.dumps([{'cpus': n['Resources'].get('CPU', 0), 'ip': n['NodeManagerAddress']} "
                "for n in ray.nodes() if n['Alive']]), flush=True)")
        out = self.compose("exec", "-T", "ray-head", "python", "-c", code, timeout=180)
        # Ray may print its own lines after ours (e.g. "raylet has lagging heartbeats" once a node is
        # killed), so the answer is the line with our marker, not the last line.
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("NODES=")]
        assert lines, f"no node list in the driver's output:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        return json.loads(lines[-1][len("NODES="):])

    def results(self) -> list[dict]:
        """`natsbench results` in a one-off container on the compose network (the DB URL of the file)."""
        out = self.compose("run", "--rm", "--no-deps", "-T", "sweep",
                           "natsbench", "results", "--sweep", SWEEP, "--format", "json", timeout=300)
        return json.loads(out.stdout[out.stdout.index("["):])

    def ray_jobs(self) -> list[dict]:
        url = f"http://127.0.0.1:{self.ports['NATSBENCH_RAY_DASHBOARD_PORT']}/api/jobs/"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def dashboard_health(self, timeout_s: float = 120) -> str:
        url = f"http://127.0.0.1:{self.ports['NATSBENCH_DASHBOARD_PORT']}/_stcore/health"
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=3) as resp:
                    return resp.read().decode().strip()
            except OSError as exc:
                last = exc
                time.sleep(1)
        raise AssertionError(f"dashboard at {url} did not answer in {timeout_s} s: {last}")


def _assert_ports_loopback(stack: Stack) -> None:
    label = f"label=com.docker.compose.project={stack.project}"
    ids = run(["docker", "ps", "-q", "--filter", label]).stdout.split()
    info = json.loads(run(["docker", "inspect", *ids]).stdout)
    published = 0
    for c in info:
        name = c["Name"]
        assert c["HostConfig"]["NetworkMode"] not in ("host", "none"), f"{name} is not on the compose network"
        assert set(c["NetworkSettings"]["Networks"]) == {f"{stack.project}_default"}, name
        for bindings in (c["NetworkSettings"]["Ports"] or {}).values():
            for b in bindings or []:
                published += 1
                assert b["HostIp"] == "127.0.0.1", f"{name} publishes {b} beyond loopback"
    assert published == 3  # postgres, the Ray dashboard, the natsbench dashboard


def _assert_sweep_done(stack: Stack, code: int) -> list[dict]:
    sweep_logs = run(["docker", "logs", stack.container("sweep")[0]], check=False)
    text = sweep_logs.stdout + sweep_logs.stderr
    assert code == 0, f"sweep service exited {code}\n{text[-4000:]}\n{stack.logs()}"
    assert "schema upgraded" in text or "schema already at version" in text, text[-2000:]  # natsbench db upgrade
    jobs = [j for j in stack.ray_jobs() if (j.get("submission_id") or "").startswith(f"natsbench-{SWEEP}-")]
    assert len(jobs) == 1 and jobs[0]["status"] == "SUCCEEDED", jobs
    assert "sweep configs/smoke.yaml" in jobs[0]["entrypoint"] and "postgres:5432" in jobs[0]["entrypoint"]
    rows = stack.results()
    keys = Counter(r["run_key"] for r in rows)
    assert len(rows) == SMOKE_CELLS and set(keys.values()) == {1}, keys  # every cell exactly once
    assert {r["status"] for r in rows} == {"done"}, [(r["policy"], r["status"], r.get("error")) for r in rows]
    assert {r["policy"] for r in rows} == {"full", "streaming_llm", "h2o"}
    return rows


def _hosts(rows: list[dict]) -> set[str]:
    return {((r.get("extras") or {}).get("worker") or {}).get("host") for r in rows}


def _assert_gone(stack: Stack) -> None:
    stack.down()
    left = stack.leftovers()
    assert left == {"containers": [], "networks": [], "volumes": []}, left


def _assert_head_and_workers(stack: Stack, alive: int | None = None) -> None:
    """The head and `alive` worker nodes (default: one per worker container) alive in Ray."""
    alive = stack.workers if alive is None else alive
    deadline = time.monotonic() + 120
    while True:  # a worker registers a few seconds after its container starts; a dead one leaves later
        try:
            nodes = stack.ray_nodes()
        except AssertionError:  # the head's GCS can be busy declaring a killed node dead: ask again
            if time.monotonic() > deadline:
                raise
            time.sleep(3)
            continue
        workers = [n for n in nodes if n["cpus"] > 0]
        if len(workers) == alive or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert len(nodes) == alive + 1, nodes  # the head (num-cpus 0) + each worker container
    assert sorted(n["cpus"] for n in workers) == [1.0] * alive, nodes


def _page_lists_sweep(stack: Stack) -> None:
    """Headless Chromium on the dashboard's Overview: the sweep table has a row named `smoke`."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        _unavailable("chromium / chromedriver not installed (make system-deps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='natsbench-chrome-')}")
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(f"http://127.0.0.1:{stack.ports['NATSBENCH_DASHBOARD_PORT']}/?view=Overview")

        def sweep_row(d):
            cells = d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"] td[role="gridcell"]')
            return SWEEP in {c.get_attribute("textContent") for c in cells}

        WebDriverWait(driver, 120, poll_frequency=0.5).until(sweep_row)
    finally:
        driver.quit()


@pytest.fixture
def stack_factory(images):
    stacks: list[Stack] = []

    def make(workers: int, sweep_workers: int) -> Stack:
        stack = Stack(workers, sweep_workers, images)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:  # also after a failed assertion: never leave a stack running
        stack.down()


def test_compose_up_one_worker(stack_factory):
    stack = stack_factory(workers=1, sweep_workers=1)
    stack.up()
    (pg,) = stack.container("postgres")
    assert run(["docker", "inspect", "-f", "{{.State.Health.Status}}", pg]).stdout.strip() == "healthy"
    _assert_ports_loopback(stack)
    _assert_head_and_workers(stack)
    _assert_sweep_done(stack, stack.wait_sweep())
    assert stack.dashboard_health() == "ok"
    _page_lists_sweep(stack)
    _assert_gone(stack)
    print(f"one worker: {time.monotonic() - stack.t0:.0f} s")


def test_compose_up_two_workers(stack_factory):
    stack = stack_factory(workers=2, sweep_workers=2)
    stack.up()
    _assert_head_and_workers(stack)
    rows = _assert_sweep_done(stack, stack.wait_sweep())
    # both worker containers ran cells: each record names the host (container) it ran on
    assert _hosts(rows) == {cid[:12] for cid in stack.container("ray-worker-cpu")}
    assert stack.dashboard_health() == "ok"
    _assert_gone(stack)
    print(f"two workers: {time.monotonic() - stack.t0:.0f} s, {len(rows)} cells")


# Ray titles an actor's process `ray::<class name>[.<method>]`: services.worker.PolicyWorker is
# ray.remote(CellWorker), so its processes show as ray::CellWorker.
ACTOR_TITLES = (b"ray::CellWorker", b"ray::PolicyWorker")


def _actor_pids_by_container(ids: list[str]) -> dict[str, int]:
    """Host pids of the sweep's actor processes per container id, from the host's /proc: the
    containers' processes are host processes and each one's cgroup path names its container."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read(200).startswith(ACTOR_TITLES):
                    continue
            with open(f"/proc/{entry}/cgroup") as f:
                cgroup = f.read()
        except OSError:  # the process ended meanwhile
            continue
        for cid in ids:
            if f"/docker/{cid}" in cgroup:
                found[cid] = int(entry)
    return found


def _actor_container(stack: Stack, timeout_s: float = 240) -> str:
    """The worker container that runs the sweep's PolicyWorker actor, found within ~0.1 s of its
    start: the smoke sweep's actor lives only a few seconds (`docker top` polling missed it)."""
    ids = stack.container("ray-worker-cpu")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _actor_pids_by_container(ids)
        if found:
            return next(iter(found))
        time.sleep(0.05)
    raise AssertionError(f"no PolicyWorker actor appeared in {timeout_s} s\n{stack.logs()}")


def test_compose_worker_killed_mid_sweep(stack_factory):
    # Two worker containers, one Ray worker for the sweep: killing the container that holds it
    # makes the driver replace the actor, which lands on the other container, and retry the cell.
    # The sweep starts as soon as the head is healthy and lasts seconds: watch for the actor at once.
    stack = stack_factory(workers=2, sweep_workers=1)
    stack.up()
    victim = _actor_container(stack)
    run(["docker", "kill", victim])
    _assert_head_and_workers(stack, alive=1)  # the killed worker's node is gone, the other one still alive
    rows = _assert_sweep_done(stack, stack.wait_sweep())
    attempts = Counter(int(r["attempts"]) for r in rows)
    assert attempts[2] >= 1, attempts  # the cell in flight on the killed worker ran again, once stored
    survivor = {cid[:12] for cid in stack.container("ray-worker-cpu")} - {victim[:12]}
    assert _hosts(rows) == survivor  # every stored cell ran on the container that was not killed
    _assert_gone(stack)
    print(f"worker killed: {time.monotonic() - stack.t0:.0f} s, attempts {dict(attempts)}")
