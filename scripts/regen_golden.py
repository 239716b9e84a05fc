"""Regenerate tests/golden/golden_outputs.json: the exact outputs of the golden cells.

Run it after an intended change of what cells compute, once `CODE_VERSION`
(services/store/keys.py) has been bumped:

    .venv/bin/python scripts/regen_golden.py

It refuses (exit 2, file untouched) when a cell's outputs differ from the committed file while
`CODE_VERSION` is still the one the file was made with: old rows of the store would then carry
a run key that claims results this code no longer produces. `--check` only compares (exit 1 on
a difference). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "golden")]

import golden_cells  # noqa: E402

from services.store.keys import CODE_VERSION  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    cells = golden_cells.compute()
    old = golden_cells.load() if golden_cells.GOLDEN_FILE.is_file() else None
    problems = golden_cells.compare(old["cells"], cells) if old else ["no golden file yet"]
    changed = [p for p in problems if "golden set" not in p and "golden file" not in p]
    summary = {"cells": len(cells), "differences": len(problems), "code_version": CODE_VERSION,
               "file_code_version": old["code_version"] if old else None,
               "seconds": round(time.perf_counter() - t0, 1)}
    for line in problems[:40]:
        print(line)
    if args.check:
        print(json.dumps(summary))
        return 1 if problems else 0
    if old and changed and old["code_version"] == CODE_VERSION:
        print(f"refused: {len(changed)} outputs changed but CODE_VERSION is still {CODE_VERSION!r}; bump "
              "CODE_VERSION in services/store/keys.py (so stored results of the old code are rerun), then run "
              "this script again", file=sys.stderr)
        print(json.dumps({**summary, "written": False}))
        return 2
    golden_cells.write(CODE_VERSION, cells)
    print(json.dumps({**summary, "written": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
