"""A real browser: `natsbench dashboard` on a free 127.0.0.1 port, opened in headless Chromium
at 1500 x 1000, on a store with four models. Every view is opened; every chart must fit the page:
no chart drawing may reach past the viewport, past its column or the main area, and the page
must not scroll sideways.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them via `make
system-deps`). Missing ones skip the test, or fail it when NATSBENCH_REQUIRE_SYSTEM_DEPS=1.
The screenshots land in test-artifacts/dashboard.png (Leaderboard) and
test-artifacts/dashboard-<view>.png.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "test-artifacts" / "dashboard.png"
# Charts each view draws on the four-model store (Altair / Vega-Lite elements).
VIEW_CHARTS = {"Overview": 1, "Leaderboard": 0, "Pareto": 1, "Latency and memory": 4, "Run detail": 0,
               "Paper reference": 1}
# For every drawn chart: how far its drawing (canvas / svg) reaches past the viewport, past the
# column or main area holding it, and past its own element (clipped); plus the page's sideways scroll.
OVERFLOW_JS = """
const vw = window.innerWidth;
const out = [];
const root = document.scrollingElement || document.documentElement;
if (root.scrollWidth > vw + 1) out.push(`page scrolls sideways: scrollWidth ${root.scrollWidth} > ${vw}`);
document.querySelectorAll('[data-testid="stVegaLiteChart"]').forEach((el, i) => {
  const holder = el.closest('[data-testid="stColumn"]') || el.closest('[data-testid="stMain"]');
  const limit = Math.min(vw, holder ? holder.getBoundingClientRect().right : vw);
  el.querySelectorAll('canvas, svg.marks').forEach((g) => {
    const right = g.getBoundingClientRect().right;
    if (right > limit + 1) out.push(`chart ${i}: drawing ends at ${right.toFixed(0)} px, room ends at ${limit.toFixed(0)} px`);
  });
  if (el.scrollWidth > el.clientWidth + 1) out.push(`chart ${i}: scrollWidth ${el.scrollWidth} > clientWidth ${el.clientWidth}`);
});
return out;
"""
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--window-size=1500,1000")


def _system_binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if found is None:
        reason = f"{name} is not installed (apt-get install -y chromium chromium-driver, or make system-deps)"
        if os.environ.get("NATSBENCH_REQUIRE_SYSTEM_DEPS") == "1":
            pytest.fail(f"{reason}; NATSBENCH_REQUIRE_SYSTEM_DEPS=1")
        pytest.skip(reason)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"natsbench dashboard exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the dashboard did not answer on 127.0.0.1:{port} within {timeout_s} s")


def _natsbench() -> list[str]:
    script = Path(sys.executable).with_name("natsbench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator.cli"]


@pytest.mark.slow
def test_every_view_in_chromium_fits_the_page(filled_store_models, tmp_path):
    chromium, chromedriver = _system_binary("chromium"), _system_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = filled_store_models
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "NATSBENCH_DB_URL"}
    proc = subprocess.Popen([*_natsbench(), "dashboard", "--db", url, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    driver = None
    try:
        _wait_healthy(proc, port, timeout_s=90)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}")
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        problems = {}
        for view, n_charts in VIEW_CHARTS.items():
            driver.get(f"http://127.0.0.1:{port}/?view={urllib.parse.quote(view)}")

            def rendered(d, view=view, n_charts=n_charts):
                titles = d.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] h1')
                drawn = d.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] :is(canvas, svg.marks)')
                return any(view.split()[0] in t.text for t in titles) and len(drawn) >= n_charts

            WebDriverWait(driver, 90, poll_frequency=0.5).until(rendered)
            if view == "Leaderboard":
                WebDriverWait(driver, 90, poll_frequency=0.5).until(_leaderboard_rendered)
            time.sleep(1.5)  # let charts and grids finish painting (sizes settle) before measuring
            problems[view] = driver.execute_script(OVERFLOW_JS)
            shot = ARTIFACT if view == "Leaderboard" else ARTIFACT.with_name(
                f"dashboard-{view.lower().replace(' ', '-')}.png")
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            if view == "Leaderboard":
                main = driver.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]')
                assert "streaming_llm" in main.text  # visible on a card, not only in the grid's a11y table
                cells = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"] td[role="gridcell"]')
                assert "snapkv" in {c.get_attribute("textContent") for c in cells}
        assert not any(problems.values()), {v: p for v, p in problems.items() if p}
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGTERM)  # natsbench passes it on to streamlit
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError("natsbench dashboard did not stop on SIGTERM") from None
    assert code == 0


def _leaderboard_rendered(d) -> bool:
    from selenium.webdriver.common.by import By

    cells = d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"] td[role="gridcell"]')
    cards = d.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')
    return len(cells) > 10 and len(cards) >= 6


# Every drawn Pareto point (SVG, role graphics-symbol): its panel (the facet cell it is drawn in) and its
# aria-label, the "field: value; ..." text Vega writes from the point's tooltip fields.
POINTS_JS = """
const out = [];
document.querySelectorAll('[data-testid="stVegaLiteChart"] svg g.mark-group.role-scope > g').forEach((cell, i) => {
  cell.querySelectorAll('path[aria-roledescription="point"]').forEach((p) => {
    out.push({cell: i, label: p.getAttribute('aria-label') || ''});
  });
});
return out;
"""


def _aria_fields(label: str) -> dict[str, str]:
    out = {}
    for part in label.split("; "):
        key, _, value = part.partition(": ")
        out[key.strip()] = value.strip()
    return out


@pytest.mark.slow
def test_pareto_in_chromium_puts_nats_on_its_bases_front(demo_store, tmp_path):
    """On results shaped like the demo's: each panel draws one context length, and every NAtS variant of
    tiny-base (fine-tuned checkpoint, base + adapter) is on tiny-base's front in the settings where it
    dominates the baselines, and off it where a baseline dominates it, as computed from the drawn points."""
    from fixture_runs import DEMO_NATS_DOMINATES

    chromium, chromedriver = _system_binary("chromium"), _system_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    url, records = demo_store
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "NATSBENCH_DB_URL"}
    proc = subprocess.Popen([*_natsbench(), "dashboard", "--db", url, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    driver = None
    n_points = sum(1 for r in records if r["accuracy"] is not None)
    try:
        _wait_healthy(proc, port, timeout_s=90)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}")
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        driver.get(f"http://127.0.0.1:{port}/?view=Pareto")
        WebDriverWait(driver, 90, poll_frequency=0.5).until(lambda d: len(d.execute_script(POINTS_JS)) >= n_points)
        time.sleep(1.0)
        drawn = driver.execute_script(POINTS_JS)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        driver.set_window_size(1500, 1350)  # the whole chart with its legends in the screenshot
        time.sleep(1.5)
        driver.save_screenshot(str(ARTIFACT.with_name("dashboard-pareto-demo.png")))
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the runs' points (the rings on each policy's best protocol are extra marks without a run key); the
    # label shows x and y as the axes format them, so exact numbers come from the records by run key
    points = [{"cell": d["cell"], **_aria_fields(d["label"])} for d in drawn]
    points = [p for p in points if "run_key" in p]
    exact = {r["run_key"]: r for r in records}
    assert len(points) == n_points and {p["run_key"] for p in points} <= set(exact)
    cells: dict[int, list[dict]] = {}
    for p in points:
        cells.setdefault(p["cell"], []).append(p)
    assert len(cells) == 4  # passkey / niah_multikey at 512 / 1024
    for cell in cells.values():  # a panel never mixes two context lengths (nor two settings)
        assert len({p["context_length"] for p in cell}) == 1 and len({p["setting"] for p in cell}) == 1
    nats = [p for p in points if p["policy"] == "nats"]
    assert {p["base"] for p in nats} == {"tiny-base"} and len({p["variant"] for p in nats}) == 2
    for run in nats:
        x, y = exact[run["run_key"]]["kv_bytes_physical"], exact[run["run_key"]]["accuracy"]
        rivals = [(exact[p["run_key"]]["kv_bytes_physical"], exact[p["run_key"]]["accuracy"])
                  for p in cells[run["cell"]] if p["base"] == run["base"]]
        dominated = any(rx <= x and ry >= y and (rx < x or ry > y) for rx, ry in rivals)
        assert (run["on_front"] == "true") == (not dominated), run
        assert (not dominated) == (run["setting"] in DEMO_NATS_DOMINATES), run
