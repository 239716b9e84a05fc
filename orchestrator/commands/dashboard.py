"""`natsbench dashboard`: serve the Streamlit dashboard (read-only) in the foreground.

Runs `streamlit run dashboard/app.py --server.headless true --server.address HOST
--server.port PORT --browser.gatherUsageStats false -- --db URL` with the store URL also in
$NATSBENCH_DB_URL, and waits until Ctrl-C (SIGINT) or SIGTERM, which it passes on.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from orchestrator.commands.common import DB_URL_ENV, add_db_argument, checked_db_url

APP_PATH = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


def configure(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")


def absolute_db_url(url: str) -> str:
    """`url` with a relative SQLite file path made absolute (the server may change directory)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    db = u.database or ""
    if u.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:") or Path(db).is_absolute():
        return url
    return u.set(database=str(Path(db).resolve())).render_as_string(hide_password=False)


def streamlit_command(db_url: str, host: str, port: int) -> list[str]:
    """The `streamlit run` command line that serves the dashboard for `db_url` on host:port."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "viewer",
        "--theme.base", "light",
        "--theme.primaryColor", "#4c78a8",
        "--", "--db", db_url,
    ]


def serve(db_url: str, host: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve the dashboard in the foreground until Ctrl-C / SIGTERM; returns the exit code."""
    if not 0 < port < 65536:
        print(f"natsbench dashboard: --port {port} is not a TCP port (use 1-65535)", file=sys.stderr)
        return 2
    try:
        db_url = absolute_db_url(db_url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError for a malformed URL
        print(f"natsbench dashboard: --db {db_url!r} is not a database URL ({exc}); "
              "use e.g. sqlite:///results/natsbench.sqlite or postgresql+psycopg://user@host:5432/db",
              file=sys.stderr)
        return 2
    env = {**os.environ, DB_URL_ENV: db_url}
    print(f"natsbench dashboard: http://{host}:{port} (store {db_url}, read-only); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    proc = subprocess.Popen(streamlit_command(db_url, host, port), env=env)
    stopped: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopped.append(signum)
        proc.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        code = proc.wait()
        return 0 if stopped else code
    except KeyboardInterrupt:  # the child got the same SIGINT from the terminal; let it finish
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    url = checked_db_url(args.db, "dashboard")
    if url is None:
        return 2
    return serve(url, args.host, args.port)
