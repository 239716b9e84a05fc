"""A screenshot of one dashboard view in headless Chromium: `natsbench dashboard --db URL` on a free 127.0.0.1
port, the view opened at WIDTH x HEIGHT, saved as PNG once its charts are drawn (what docs/dashboard-pareto.png
is made with, from the store of a `make demo` run).

    NO_DASHBOARD=1 natsbench demo --db sqlite:///results/natsbench.sqlite
    python scripts/dashboard_screenshot.py --db sqlite:///results/natsbench.sqlite --out docs/dashboard-pareto.png

Needs Debian's chromium and chromium-driver (make system-deps) and selenium (the dev extra). Exit 2 with one
line when one is missing or the store has no runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from dashboard.health import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
VIEWS = ("Overview", "Leaderboard", "Pareto", "Latency and memory", "Run detail", "Paper reference")
DRAWN_JS = "return document.querySelectorAll('[data-testid=\"stVegaLiteChart\"] :is(canvas, svg.marks)').length;"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, metavar="URL", help="result store (e.g. sqlite:///results/natsbench.sqlite)")
    ap.add_argument("--view", default="Pareto", help=f"one of: {', '.join(VIEWS)} (default Pareto)")
    ap.add_argument("--out", required=True, type=Path, help="PNG file to write")
    ap.add_argument("--width", type=int, default=1500)
    ap.add_argument("--height", type=int, default=1350)
    args = ap.parse_args()
    if args.view not in VIEWS:
        print(f"dashboard_screenshot: --view {args.view!r}; allowed: {', '.join(VIEWS)}", file=sys.stderr)
        return 2
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        print("dashboard_screenshot: chromium / chromedriver not installed (make system-deps)", file=sys.stderr)
        return 2
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    natsbench = Path(sys.executable).with_name("natsbench")
    cmd = [str(natsbench)] if natsbench.exists() else [sys.executable, "-m", "orchestrator.cli"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "NATSBENCH_DB_URL"}
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([*cmd, "dashboard", "--db", args.db, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=tmp, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        driver = None
        try:
            try:
                wait_healthy(proc, port, 90)
            except RuntimeError as exc:
                raise SystemExit(f"dashboard_screenshot: {exc}") from None
            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--no-first-run", f"--window-size={args.width},{args.height}", f"--user-data-dir={tmp}/chrome"):
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service(chromedriver), options=options)
            driver.get(f"http://127.0.0.1:{port}/?view={urllib.parse.quote(args.view)}")
            WebDriverWait(driver, 120, poll_frequency=0.5).until(lambda d: d.execute_script(DRAWN_JS) > 0)
            time.sleep(2.0)  # let the charts settle
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            if driver is not None:
                driver.quit()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {args.view}, {args.width}x{args.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
