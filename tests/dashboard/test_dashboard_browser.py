"""A real browser: `natsbench dashboard` on a free 127.0.0.1 port, opened in headless Chromium.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them via `make
system-deps`). Missing ones skip the test, or fail it when NATSBENCH_REQUIRE_SYSTEM_DEPS=1.
The screenshot lands in test-artifacts/dashboard.png.
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
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "test-artifacts" / "dashboard.png"
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
def test_leaderboard_in_chromium(filled_store, tmp_path):
    chromium, chromedriver = _system_binary("chromium"), _system_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = filled_store
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
        driver.get(f"http://127.0.0.1:{port}/?view=Leaderboard")

        def leaderboard_rendered(d):
            cells = d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"] td[role="gridcell"]')
            cards = d.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')
            return len(cells) > 10 and len(cards) >= 6

        WebDriverWait(driver, 90, poll_frequency=0.5).until(leaderboard_rendered)
        time.sleep(1.5)  # let the grid and cards finish painting before the screenshot
        main = driver.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]')
        assert "Leaderboard" in main.text
        assert "streaming_llm" in main.text  # visible on a card, not only in the grid's a11y table
        cells = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"] td[role="gridcell"]')
        assert "snapkv" in {c.get_attribute("textContent") for c in cells}
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACT)) and ARTIFACT.stat().st_size > 10_000
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
