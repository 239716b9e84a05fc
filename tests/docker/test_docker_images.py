"""The compose test's image key (docker_images.image_key): what changes it and what does not. No docker needed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import docker_images as D
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_dockerignore_patterns_match_as_docker_matches_them():
    rules = D.dockerignore(REPO)
    for rel in ("nats_model/__pycache__/cache.cpython-311.pyc", "__pycache__/x.pyc", "services/a/b/c.pyc",
                ".venv/bin/python", ".venv-kvpress/lib", "natsbench.egg-info/PKG-INFO", "results/x.json",
                "a.sqlite", ".git/HEAD"):
        assert D.ignored(rel, rules), rel
    for rel in ("nats_model/cache.py", "models/tiny-base/config.json", "configs/smoke.yaml",
                "docker/wheelhouse/README.md", "models/results.db.json", "venv/x"):
        assert not D.ignored(rel, rules), rel
    # one path element per `*`; `**` any number of them; the last matching pattern decides
    rules = [(False, D._pattern_regex("*.db")), (False, D._pattern_regex("a/**/z")),
             (False, D._pattern_regex("keep")), (True, D._pattern_regex("keep/this"))]
    assert D.ignored("x.db", rules) and not D.ignored("sub/x.db", rules)
    assert D.ignored("a/z", rules) and D.ignored("a/b/c/z", rules) and not D.ignored("b/a/z", rules)
    assert D.ignored("keep/other", rules) and not D.ignored("keep/this", rules)


def test_copy_sources_are_the_dockerfiles_context_paths():
    assert D.copy_sources(REPO / "docker" / "Dockerfile") == [
        "docker/wheelhouse/", "pyproject.toml", "pyproject.toml", "README.md", "nats_model/", "services/",
        "orchestrator/", "dashboard/", "configs/", "models/"]
    assert D.copy_sources(REPO / "docker" / "postgres.Dockerfile") == ["docker/postgres-entrypoint.sh"]


@pytest.mark.parametrize("line", ["ADD x /x", "COPY src/*.py /app/", 'COPY ["a", "/b"]'])
def test_copy_forms_the_key_cannot_follow_are_refused(tmp_path, line):
    (tmp_path / "Dockerfile").write_text(f"FROM scratch\n{line}\n")
    with pytest.raises(ValueError, match="Dockerfile"):
        D.copy_sources(tmp_path / "Dockerfile")


@pytest.fixture
def mini_repo(tmp_path) -> Path:
    """The real Dockerfile and .dockerignore over a small context holding every path the Dockerfile copies."""
    repo = tmp_path / "repo"
    (repo / "docker" / "wheelhouse").mkdir(parents=True)
    shutil.copy(REPO / "docker" / "Dockerfile", repo / "docker" / "Dockerfile")
    shutil.copy(REPO / ".dockerignore", repo / ".dockerignore")
    for rel in ("pyproject.toml", "README.md", "nats_model/__init__.py", "nats_model/cache.py",
                "services/__init__.py", "orchestrator/cli.py", "dashboard/app.py", "configs/smoke.yaml",
                "models/tiny-base/config.json", "docker/wheelhouse/README.md", "tests/test_x.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(f"{rel}\n")
    return repo


def _key(repo: Path, base: str = "sha256:base", **args: str) -> str:
    return D.image_key(repo, "docker/Dockerfile", base, {"BASE_IMAGE": "b:1", "OFFLINE": "1", **args})


def test_the_key_follows_every_build_input_and_nothing_else(mini_repo):
    key = _key(mini_repo)
    assert key == _key(mini_repo) and len(key) == 20
    # what docker leaves out of the context, or what no COPY reads, changes nothing
    (mini_repo / "nats_model" / "__pycache__").mkdir()
    (mini_repo / "nats_model" / "__pycache__" / "cache.cpython-311.pyc").write_bytes(b"\0pyc")
    (mini_repo / "tests" / "test_x.py").write_text("changed\n")
    (mini_repo / "natsbench.egg-info").mkdir()
    (mini_repo / "scratch.sqlite").write_text("db")
    assert _key(mini_repo) == key
    # every input does
    changed = {"base image": _key(mini_repo, base="sha256:other"), "build arg": _key(mini_repo, OFFLINE="0")}
    edits = {
        "source bytes": lambda r: (r / "nats_model" / "cache.py").write_text("x = 1\n"),
        "new source": lambda r: (r / "services" / "worker.py").write_text("\n"),
        "mode": lambda r: os.chmod(r / "configs" / "smoke.yaml", 0o755),
        "a wheel": lambda r: (r / "docker" / "wheelhouse" / "torch-2.13.0-cp311.whl").write_bytes(b"PK"),
        "a fetched model": lambda r: (r / "models" / "smollm2" / "model.safetensors").parent.mkdir() or (
            r / "models" / "smollm2" / "model.safetensors").write_bytes(b"w"),
        "README": lambda r: (r / "README.md").write_text("new\n"),
        "Dockerfile": lambda r: (r / "docker" / "Dockerfile").write_text(
            (r / "docker" / "Dockerfile").read_text() + "\n# comment\n"),
        ".dockerignore": lambda r: (r / ".dockerignore").write_text(
            (r / ".dockerignore").read_text() + "configs/local.yaml\n"),
    }
    for name, edit in edits.items():
        before = _key(mini_repo)
        edit(mini_repo)
        changed[name] = _key(mini_repo)
        assert changed[name] != before, name
    assert key not in changed.values() and len(set(changed.values())) == len(changed)


def test_a_missing_copy_source_is_an_error_naming_it(mini_repo):
    shutil.rmtree(mini_repo / "configs")
    with pytest.raises(FileNotFoundError, match="configs/"):
        _key(mini_repo)


def test_wheels_are_linked_once_from_the_cache(tmp_path):
    cached, dest = tmp_path / "cache", tmp_path / "ctx" / "wheelhouse"
    cached.mkdir()
    for name in ("a-1-py3-none-any.whl", "b-2-py3-none-any.whl"):
        (cached / name).write_bytes(name.encode())
    (cached / ".pyproject.stamp").write_text("x")
    assert D.link_wheels(cached, dest) == 2
    assert sorted(p.name for p in dest.iterdir()) == ["a-1-py3-none-any.whl", "b-2-py3-none-any.whl"]
    assert (dest / "a-1-py3-none-any.whl").stat().st_ino == (cached / "a-1-py3-none-any.whl").stat().st_ino
    assert D.link_wheels(cached, dest) == 0
