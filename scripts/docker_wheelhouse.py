"""Fill a wheelhouse for an offline `docker/Dockerfile` build: torch plus every dependency of the project.

    .venv/bin/python scripts/docker_wheelhouse.py [DIR] [--extras kernels]

DIR defaults to docker/wheelhouse (git-ignored). The wheels are downloaded with this interpreter's
pip (`pip download --only-binary=:all:`), so pip's own configuration applies: on the project's
machines the CPU build of torch 2.13.0 comes from the local wheel cache, everything else from the
package index. Run it with a Python 3.11 on Linux x86_64 (the image's platform). Already present
wheels are kept (pip skips them), so a second run costs only the index look-ups. Then
`docker build --build-arg OFFLINE=1 ...` installs from DIR alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The build backend of the project's pyproject, needed for its (editable) install in the image.
BUILD_REQUIREMENTS = ["setuptools>=68", "wheel"]


def requirements(extras: list[str]) -> list[str]:
    """The project's dependencies (torch first), its build backend and the chosen extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            print(f"docker_wheelhouse: --extras: unknown extra {extra!r}; allowed: {', '.join(sorted(optional))}",
                  file=sys.stderr)
            raise SystemExit(2)
        deps += optional[extra]
    return deps + BUILD_REQUIREMENTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", default=str(REPO / "docker" / "wheelhouse"), metavar="DIR")
    parser.add_argument("--extras", action="append", default=[], metavar="NAME",
                        help="also the wheels of this optional extra of the project (repeatable)")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(dest),
           *requirements(args.extras)]
    code = subprocess.call(cmd)
    if code == 0:
        wheels = sorted(dest.glob("*.whl"))
        size = sum(w.stat().st_size for w in wheels) / 2**20
        print(f"{len(wheels)} wheels, {size:.0f} MiB in {dest}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
