"""`make bench`: run every benchmark in benchmarks/, keep each one's JSON summary, draw the plots and
regenerate the README "Results" section from those files.

Every benchmark script (`benchmarks/<name>.py`, except this runner and `report.py` / `plots.py`)
prints a human table and, as its last stdout line, one JSON object; each accepts `--quick` (a
small variant: `make bench QUICK=1`, under 15 minutes in all on a 2-core CPU). For every script this
runner stores `benchmarks/results/<name>.json` = {"benchmark", "command", "returncode", "wall_s",
"summary" (the JSON line, or null), "error" (the last stderr lines when it failed)}, plus
`benchmarks/results/run.json` (date, commit, machine, quick or full) and the PNG plots, then rewrites
the README section between `<!-- results:begin -->` and `<!-- results:end -->`. A benchmark that
fails or skips is recorded as such; the README shows what it said, never an old number.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only decode_latency,prefill] [--no-readme]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "results"
NOT_BENCHMARKS = {"run_all", "report", "plots"}
TIMEOUT_S = {"quick": 900, "full": 3 * 3600}

sys.path.insert(0, str(BENCH_DIR))
import plots  # noqa: E402
import report  # noqa: E402


def discover() -> list[str]:
    """Names of the benchmark scripts, in a fixed order."""
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in NOT_BENCHMARKS and not p.stem.startswith("_"))


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
        if line:
            return None
    return None


def run_one(name: str, quick: bool, log_dir: Path) -> dict:
    cmd = [sys.executable, f"benchmarks/{name}.py"] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              timeout=TIMEOUT_S["quick" if quick else "full"])
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, rc = exc.stdout or "", f"timed out after {exc.timeout} s", 124
        out = out.decode() if isinstance(out, bytes) else out
    wall = round(time.perf_counter() - t0, 1)
    (log_dir / f"{name}.log").write_text(f"$ {' '.join(cmd[1:])}\n{out}\n--- stderr ---\n{err}")
    summary = last_json_line(out) if rc == 0 else None
    error = None
    if summary is None:
        tail = [line for line in (err or out).strip().splitlines() if line.strip()][-3:]
        error = " | ".join(tail) or f"exit code {rc}, no JSON line"
    return {"benchmark": name, "command": "python " + " ".join(cmd[1:]), "returncode": rc, "wall_s": wall,
            "summary": summary, "error": error}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": None, "gpu": None, "os": platform.platform()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30)
    except (ValueError, OSError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the quick variant of every benchmark")
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the README Results section")
    args = ap.parse_args(argv)
    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"--only: unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}", file=sys.stderr)
            return 2
        names = wanted
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / "logs"  # full outputs, git-ignored
    log_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        res = run_one(name, args.quick, log_dir)
        state = "ok" if res["summary"] is not None else f"FAILED ({res['error']})"
        print(f"    {res['wall_s']:.0f} s, {state}", flush=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    run = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
           "variant": "quick" if args.quick else "full", "machine": machine(),
           "command": "make bench" + (" QUICK=1" if args.quick else ""), "benchmarks": names,
           "wall_s": round(time.perf_counter() - t0, 1)}
    (RESULTS / "run.json").write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")
    drawn = plots.draw_all(RESULTS)
    print(f"plots: {', '.join(p.name for p in drawn) or 'none'}")
    if not args.no_readme:
        report.update_readme(ROOT / "README.md", RESULTS)
        print("README.md Results section regenerated")
    results = {n: json.loads((RESULTS / f"{n}.json").read_text()) for n in names}
    targets = report.target_rows(results)
    print(json.dumps({"benchmark": "run_all", "variant": run["variant"], "wall_s": run["wall_s"],
                      "ran": len(names), "failed": sorted(n for n, r in results.items() if r["summary"] is None),
                      "targets_met": sum(1 for t in targets if t["met"] is True),
                      "targets_missed": [t["label"] for t in targets if t["met"] is False]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
