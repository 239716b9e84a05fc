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
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dashboard.health import free_port, wait_healthy

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
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "NATSBENCH_DB_URL"}
    proc = subprocess.Popen([*_natsbench(), "dashboard", "--db", url, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    driver = None
    try:
        wait_healthy(proc, port, timeout_s=90)
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


# What the Pareto view drew (SVG): every point (its facet cell, its aria-label, the "field: value; ..." text Vega
# writes from the point's tooltip fields, its place on the screen and its fill opacity), every front line's
# vertices on the screen, and every legend (title; per entry its label, its symbol's fill, size and right edge).
PARETO_JS = """
const points = [], lines = [], legends = [];
const screen = (m, x, y) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f];
document.querySelectorAll('[data-testid="stVegaLiteChart"] svg g.mark-group.role-scope.cell > g').forEach((cell, i) => {
  cell.querySelectorAll('path[aria-roledescription="point"]').forEach((p) => {
    const m = p.getScreenCTM();
    points.push({cell: i, label: p.getAttribute('aria-label') || '', x: m.e, y: m.f,
                 fill_opacity: p.getAttribute('fill-opacity')});
  });
  cell.querySelectorAll('path[aria-roledescription="line mark"]').forEach((p) => {
    const m = p.getScreenCTM();
    const nums = (p.getAttribute('d') || '').match(/-?[0-9]*[.]?[0-9]+(e-?[0-9]+)?/g) || [];
    const vertices = [];
    for (let k = 0; k + 1 < nums.length; k += 2) vertices.push(screen(m, +nums[k], +nums[k + 1]));
    lines.push({cell: i, vertices});
  });
});
document.querySelectorAll('[data-testid="stVegaLiteChart"] svg g.role-legend').forEach((g) => {
  const title = g.querySelector('.role-legend-title text');
  const labels = [...g.querySelectorAll('.role-legend-label text')].map((t) => t.textContent);
  const symbols = [...g.querySelectorAll('.role-legend-symbol path')].map((s) => {
    const r = s.getBoundingClientRect();
    return {fill: s.getAttribute('fill') || '', width: r.width, height: r.height, right: r.right};
  });
  legends.push({title: title ? title.textContent : '', entries: labels.map((label, k) => ({label, ...symbols[k]}))});
});
return {points, lines, legends, width: window.innerWidth};
"""


def _aria_fields(label: str) -> dict[str, str]:
    out = {}
    for part in label.split("; "):
        key, _, value = part.partition(": ")
        out[key.strip()] = value.strip()
    return out


def _pareto_page(url: str, tmp_path: Path, n_points: int, shot: str) -> dict:
    """`natsbench dashboard` on the store at `url`, its Pareto view in headless Chromium once `n_points`
    points are drawn (window 1500 x 1350: the whole chart with its legends); PARETO_JS's answer, the run
    points' aria fields parsed (`runs`: the points with a run key; the rings on each policy's best protocol
    are extra marks without one). The screenshot lands in test-artifacts/`shot`."""
    chromium, chromedriver = _system_binary("chromium"), _system_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "NATSBENCH_DB_URL"}
    proc = subprocess.Popen([*_natsbench(), "dashboard", "--db", url, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    driver = None
    try:
        wait_healthy(proc, port, timeout_s=90)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROME_FLAGS[:-1], "--window-size=1500,1350"):
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}")
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        driver.get(f"http://127.0.0.1:{port}/?view=Pareto")
        WebDriverWait(driver, 90, poll_frequency=0.5).until(
            lambda d: len(d.execute_script(PARETO_JS)["points"]) >= n_points)
        time.sleep(1.5)  # sizes settle
        drawn = driver.execute_script(PARETO_JS)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACT.with_name(shot)))
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    runs = [{"cell": d["cell"], "x": d["x"], "y": d["y"], "fill_opacity": d["fill_opacity"],
             **_aria_fields(d["label"])} for d in drawn["points"]]
    return {**drawn, "runs": [r for r in runs if "run_key" in r]}


def _check_protocol_legend(page: dict) -> None:
    """The protocol legend is drawn: titled "protocol", an entry per protocol the drawn runs used (in
    PROTOCOLS order), each symbol visible inside the page and filled at its protocol's PROTOCOL_FILL, as
    every drawn run's marker is."""
    from dashboard.charts import PROTOCOL_FILL
    from services.declaration import PROTOCOLS

    used = {r["compress"] for r in page["runs"]}
    (legend,) = [g for g in page["legends"] if g["title"] == "protocol"]
    assert [e["label"] for e in legend["entries"]] == [p for p in PROTOCOLS if p in used]
    for entry in legend["entries"]:
        assert entry["width"] > 4 and entry["height"] > 4 and entry["right"] <= page["width"], entry
        alpha = float(entry["fill"].rsplit(",", 1)[-1].rstrip(") "))
        assert entry["fill"].startswith("rgba(") and alpha == pytest.approx(PROTOCOL_FILL[entry["label"]]), entry
    for run in page["runs"]:
        assert float(run["fill_opacity"]) == pytest.approx(PROTOCOL_FILL[run["compress"]]), run


def _check_fronts(page: dict, records: list[dict]) -> dict[int, list[dict]]:
    """Each panel (facet cell) draws one workload setting of one base, so one context length; every drawn
    run is flagged on the front exactly when no run of its panel dominates it (fewer or equal bytes and
    higher or equal accuracy, one strictly), from the records' exact numbers (the label shows them as the
    axes format them); every run on the front is a vertex of the front line drawn in its panel. The runs
    by panel."""
    exact = {r["run_key"]: r for r in records}
    points = page["runs"]
    assert {p["run_key"] for p in points} <= set(exact)
    cells: dict[int, list[dict]] = {}
    for p in points:
        cells.setdefault(p["cell"], []).append(p)
    for cell in cells.values():  # a panel never mixes two context lengths (nor two settings, nor two bases)
        assert len({(p["context_length"], p["setting"], p["base"]) for p in cell}) == 1, cell
    vertices = {i: [v for line in page["lines"] if line["cell"] == i for v in line["vertices"]] for i in cells}
    for p in points:
        x, y = exact[p["run_key"]]["kv_bytes_physical"], exact[p["run_key"]]["accuracy"]
        rivals = [(exact[q["run_key"]]["kv_bytes_physical"], exact[q["run_key"]]["accuracy"]) for q in cells[p["cell"]]]
        dominated = any(rx <= x and ry >= y and (rx < x or ry > y) for rx, ry in rivals)
        assert (p["on_front"] == "true") == (not dominated), p
        if not dominated:
            assert any(abs(vx - p["x"]) < 0.75 and abs(vy - p["y"]) < 0.75 for vx, vy in vertices[p["cell"]]), p
    return cells


@pytest.mark.slow
def test_pareto_in_chromium_puts_nats_on_its_bases_front(demo_store, tmp_path):
    """On results shaped like the demo's: each panel draws one context length, and every NAtS variant of
    tiny-base (fine-tuned checkpoint, base + adapter) is on tiny-base's front in the settings where it
    dominates the baselines, and off it where a baseline dominates it, as computed from the drawn points;
    the protocol legend is drawn."""
    from fixture_runs import DEMO_NATS_DOMINATES

    url, records = demo_store
    n_points = sum(1 for r in records if r["accuracy"] is not None)
    page = _pareto_page(url, tmp_path, n_points, "dashboard-pareto-demo.png")
    assert len(page["runs"]) == n_points
    cells = _check_fronts(page, records)
    assert len(cells) == 4  # passkey / niah_multikey at 512 / 1024
    nats = [p for p in page["runs"] if p["policy"] == "nats"]
    assert {p["base"] for p in nats} == {"tiny-base"} and len({p["variant"] for p in nats}) == 2
    for run in nats:
        assert (run["on_front"] == "true") == (run["setting"] in DEMO_NATS_DOMINATES), run
    _check_protocol_legend(page)
    assert {p["compress"] for p in page["runs"]} == {"streaming", "prompt", "context"}


@pytest.mark.slow
def test_pareto_in_chromium_on_the_demos_results(demo_sweep_store, tmp_path):
    """On the demo's own results (configs/demo.yaml run by `natsbench demo`, examples capped: see
    demo_sweep.py): every cell done; a panel per workload setting and base, never two context lengths in
    one; SmolLM2 (the real model) is its own panel with NAtS (its shipped adapter) beside the four baselines
    and the full cache; every drawn run (the NAtS variants of tiny-base and SmolLM2 included) is on its base's
    front exactly where nothing of that base dominates it, and SmolLM2's NAtS (~3% of the cache) is on it; the
    protocol legend is drawn. With 1 example a cell the accuracies are 0 or 1: whether tiny-base's NAtS variants
    dominate depends on that example, the rule checked does not."""
    from services.declaration import DONE

    url, records = demo_sweep_store
    assert records and all(r["status"] == DONE for r in records), [r["error"] for r in records if r["error"]]
    task = [r for r in records if r["accuracy"] is not None]
    page = _pareto_page(url, tmp_path, len(task), "dashboard-pareto-demo-sweep.png")
    assert {p["run_key"] for p in page["runs"]} == {r["run_key"] for r in task}
    cells = _check_fronts(page, records)
    assert len(cells) == len({(p["setting"], p["base"]) for p in page["runs"]}) == 5
    (smol,) = [c for c in cells.values() if c[0]["base"] == "smollm2-135m-instruct"]
    assert {p["policy"] for p in smol} == {"full", "streaming_llm", "h2o", "snapkv", "tova", "nats"}
    assert {p["variant"] for p in smol if p["policy"] == "nats"} == {"smollm2-135m-instruct + smollm2-135m-nats"}
    # the bases with an adapter run: their NAtS points are on the front exactly where they dominate (above);
    # on SmolLM2 NAtS holds ~3% of the cache against the baselines' 25%, so it is on the front at any accuracy
    assert {p["base"] for p in page["runs"] if " + " in p["variant"]} == {"tiny-base", "smollm2-135m-instruct"}
    (smol_nats,) = [p for p in smol if p["policy"] == "nats"]
    assert smol_nats["on_front"] == "true" and float(smol_nats["kept_fraction"]) < 0.1, smol_nats
    _check_protocol_legend(page)
