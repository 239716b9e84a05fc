"""The compose test's images, tagged by a digest of everything their build reads, and reused when present.

`image_key(repo, dockerfile, base_id, build_args)` is a sha256 over the Dockerfile, the build arguments, the
base image's id, `.dockerignore` and every file each `COPY` of the Dockerfile takes from the build context
(path, mode, bytes; with `.dockerignore` applied as docker applies it). An image tagged `<repo>:<prefix>-<key>`
that exists was built from exactly those inputs, so the test uses it without calling `docker build` (which on a
fresh clone would still send the whole context, ~0.5 GB with the wheelhouse, and checksum it); any change of an
input gives a new key and a real build, on docker's layer cache.

The wheelhouse (docker/wheelhouse/, git-ignored, so empty on a fresh clone) is kept filled once under
`$NATSBENCH_CACHE_DIR` or `~/.cache/natsbench` (`docker-wheelhouse/`, refreshed when pyproject's dependencies
change) and hard-linked into the clone: its wheels are inputs of the key like any other file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path

KEY_VERSION = "natsbench compose-test images v1"


def _pattern_regex(pattern: str) -> re.Pattern:
    """A `.dockerignore` pattern as docker's pattern matcher reads it (`*`, `?` and classes within one path
    element, `**` across any number of them)."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ValueError(f".dockerignore: unclosed '[' in {pattern!r}")
            body = pattern[i + 1:end]
            out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore(repo: Path) -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per pattern of repo/.dockerignore, in file order (the last match decides)."""
    path = repo / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = os.path.normpath(line[1:].strip() if negated else line).lstrip("/")
        rules.append((negated, _pattern_regex(line)))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether docker leaves `rel` (a /-separated path in the context) out: the last pattern that matches
    the path or one of its parent folders decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    out = False
    for negated, rx in rules:
        if any(rx.match(p) for p in prefixes):
            out = not negated
    return out


def copy_sources(dockerfile: Path) -> list[str]:
    """The build-context paths the Dockerfile's COPY instructions read (COPY --from=STAGE reads none)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources: list[str] = []
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        where = f"{dockerfile.name}: {line.strip()!r}"
        if words[0].upper() == "ADD" or words[1].lstrip().startswith("["):
            raise ValueError(f"{where}: only the plain `COPY SRC... DEST` form is keyed")
        args = shlex.split(words[1])
        flags = [a for a in args if a.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        paths = [a for a in args if not a.startswith("--")]
        for src in paths[:-1]:
            if any(ch in src for ch in "*?["):
                raise ValueError(f"{where}: wildcards in COPY sources are not keyed")
            sources.append(src)
    return sources


def tree_digest(repo: Path, sources: list[str], rules: list[tuple[bool, re.Pattern]]) -> str:
    """sha256 over every file and folder the sources take from the context: path, kind, mode and bytes."""
    h = hashlib.sha256()

    def add(path: Path) -> None:
        rel = path.relative_to(repo).as_posix()
        if ignored(rel, rules):
            return
        st = path.lstat()
        if path.is_symlink():
            h.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_dir():
            h.update(f"D {rel} {st.st_mode & 0o7777:o}\n".encode())
            for child in sorted(path.iterdir()):
                add(child)
        else:
            h.update(f"F {rel} {st.st_mode & 0o7777:o} {st.st_size}\n".encode())
            with path.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())

    for src in sources:
        path = repo / src.rstrip("/")
        if not path.exists():
            raise FileNotFoundError(f"COPY source {src} is not in the build context {repo}")
        h.update(f"S {src}\n".encode())
        add(path)
    return h.hexdigest()


def image_key(repo: Path, dockerfile: str, base_id: str, build_args: dict[str, str]) -> str:
    """The digest of every input of `docker build -f DOCKERFILE --build-arg ... .` run in `repo`."""
    path = repo / dockerfile
    rules = dockerignore(repo)
    h = hashlib.sha256(KEY_VERSION.encode())
    for part in (dockerfile, path.read_bytes(), base_id, json.dumps(build_args, sort_keys=True),
                 (repo / ".dockerignore").read_bytes() if (repo / ".dockerignore").exists() else b"",
                 tree_digest(repo, copy_sources(path), rules)):
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def cache_dir() -> Path:
    return Path(os.environ.get("NATSBENCH_CACHE_DIR") or Path.home() / ".cache" / "natsbench")


def link_wheels(cached: Path, dest: Path) -> int:
    """Hard-link (or copy, across file systems) every wheel of `cached` missing from `dest`; how many."""
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for wheel in sorted(cached.glob("*.whl")):
        target = dest / wheel.name
        if target.exists():
            continue
        try:
            os.link(wheel, target)
        except OSError:
            shutil.copy2(wheel, target)
        n += 1
    return n
