"""`make bench`'s report: the README Results section is exactly what benchmarks/report.py renders from
the committed benchmarks/results/ files, targets are judged from the JSON lines, failures show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402
import run_all  # noqa: E402


def test_readme_results_section_matches_the_committed_results():
    section = report.section_of((ROOT / "README.md").read_text())
    assert section is not None, "README.md has no Results section: run `make bench QUICK=1`"
    assert section == report.render(report.RESULTS), (
        "README Results section differs from benchmarks/results/: rerun `make bench QUICK=1` "
        "(or `python benchmarks/report.py` after editing the results by a benchmark run)")
    for png in report.RESULTS.glob("*.png"):
        assert f"(benchmarks/results/{png.name})" in section, f"{png.name} not shown in the README"


def _write(results: Path, name: str, summary: dict | None, error: str | None = None) -> None:
    (results / f"{name}.json").write_text(json.dumps(
        {"benchmark": name, "command": f"python benchmarks/{name}.py --quick", "returncode": 0 if summary else 1,
         "wall_s": 1.0, "summary": summary, "error": error}))


@pytest.fixture
def results(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(
        {"date": "2026-12-02 18:00 UTC", "commit": "abc", "variant": "quick", "command": "make bench QUICK=1",
         "wall_s": 3.0, "machine": {"cpu": "X", "cores": 2, "memory_gib": 24, "gpu": None, "torch": "2.13.0"}}))
    _write(tmp_path, "decode_latency", {"ratio_10pct_vs_full_16k": 0.4, "max_physical_over_kept": 1.01,
                                        "ms_per_token": {"full@1024": 2.0, "full@4096": 4.0, "h2o@1024": 1.0,
                                                         "h2o@4096": 1.1}})
    _write(tmp_path, "prefill", None, error="Traceback | ValueError: boom")
    _write(tmp_path, "from_scratch", {"scratch_nats_ppl": 3.0, "twin_h2o_12_5_ppl": 3.5,
                                      "scratch_nats_kv_fraction": 0.2})
    return tmp_path


def test_targets_are_judged_from_the_summaries(results):
    _, loaded = report.load_results(results)
    rows = {r["label"]: r for r in report.target_rows(loaded)}
    assert rows["decode_latency.ratio_10pct_vs_full_16k"]["met"] is False  # 0.4 > 0.35: missed, shown
    assert rows["decode_latency.max_physical_over_kept"]["met"] is True
    assert rows["prefill.full_ttft_over_hf_8k"]["met"] is None  # failed benchmark: not run, no old number
    assert rows["from_scratch.scratch_nats_ppl"]["met"] is True  # compared with another key of the summary
    assert rows["from_scratch.scratch_nats_kv_fraction"]["met"] is False


def test_render_shows_missed_targets_failures_and_plots(results):
    import plots

    drawn = plots.draw_all(results)
    assert [p.name for p in drawn] == ["decode_ms_per_token.png"]
    text = report.render(results)
    assert text.startswith(report.BEGIN) and text.endswith(report.END)
    assert "| `decode_latency.ratio_10pct_vs_full_16k` <= 0.35 | 0.4 | **no** |" in text
    assert "failed: Traceback | ValueError: boom" in text
    assert "![decode_latency: decode_ms_per_token](benchmarks/results/decode_ms_per_token.png)" in text
    assert "| full@4096 | 4 |" in text
    # rendering is a pure function of the files
    assert report.render(results) == text


def test_update_readme_replaces_only_the_section(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\nbefore\n\n{report.BEGIN}\nold\n{report.END}\n\nafter\n")
    assert report.update_readme(readme, results) is True
    text = readme.read_text()
    assert text.startswith("# t\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert report.section_of(text) == report.render(results)
    assert report.update_readme(readme, results) is False


def test_runner_records_a_failing_benchmark_and_parses_json(tmp_path, monkeypatch):
    assert {"decode_latency", "kernel", "platform_overhead"} <= set(run_all.discover())
    assert not {"run_all", "report", "plots"} & set(run_all.discover())
    assert run_all.last_json_line("table\n{\"a\": 1}\n") == {"a": 1}
    assert run_all.last_json_line("{\"a\": 1}\ntrailing text\n") is None
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--only", "nope"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "--only: unknown benchmark(s) nope" in out.stderr
