import subprocess
import sys

from orchestrator.cli import COMMANDS, build_parser, main


def test_help_lists_every_command(capsys):
    parser = build_parser()
    text = parser.format_help()
    for name in COMMANDS:
        assert name in text


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "results" in out.stdout


def test_no_command_exits_2():
    assert main([]) == 2
