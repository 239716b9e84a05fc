"""`natsbench dashboard`: option parsing and the streamlit command line it runs."""

from pathlib import Path

from orchestrator.cli import build_parser
from orchestrator.commands import dashboard


def test_options_and_defaults():
    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.db) == ("127.0.0.1", 8501, None)
    args = build_parser().parse_args(["dashboard", "--db", "sqlite:///x.sqlite", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.host, args.port, args.db) == ("0.0.0.0", 9000, "sqlite:///x.sqlite")


def test_streamlit_command_line():
    cmd = dashboard.streamlit_command("sqlite:////abs/x.sqlite", "127.0.0.1", 8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"]
    assert Path(cmd[4]) == dashboard.APP_PATH and dashboard.APP_PATH.is_file()
    pairs = dict(zip(cmd[5::2], cmd[6::2], strict=False))
    assert pairs["--server.headless"] == "true"
    assert pairs["--server.address"] == "127.0.0.1"
    assert pairs["--server.port"] == "8765"
    assert pairs["--browser.gatherUsageStats"] == "false"
    assert cmd[-3:] == ["--", "--db", "sqlite:////abs/x.sqlite"]


def test_relative_sqlite_url_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dashboard.absolute_db_url("sqlite:///results/a.sqlite") == f"sqlite:///{tmp_path}/results/a.sqlite"
    pg = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert dashboard.absolute_db_url(pg) == pg


def test_bad_port_and_bad_url_exit_2(capsys):
    assert dashboard.serve("sqlite:///x.sqlite", "127.0.0.1", 70000) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert dashboard.serve("not a url", "127.0.0.1", 8501) == 2
    assert "not a database URL" in capsys.readouterr().err
