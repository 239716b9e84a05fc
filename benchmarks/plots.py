"""PNG plots for the README Results section, drawn from `benchmarks/results/*.json` by `make bench`.

One function per benchmark that has a picture worth looking at; each reads only its benchmark's
JSON summary and returns the files it wrote (none when the summary lacks what it needs):
- decode_latency: decode ms/token against context, one line per policy (batch 1);
- prefill: time to first token against prompt length, one line per policy (+ transformers);
- quality_vs_kv: per workload, accuracy (or perplexity) against physical KV fraction with 95%
  interval bars, one series per policy, the Pareto front drawn through the best points.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _summary(results_dir: Path, name: str) -> dict | None:
    path = results_dir / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("summary")


def _by_policy(table: dict) -> dict[str, list[tuple[int, float]]]:
    """{"policy@1024": v, ...} -> {policy: [(1024, v), ...]} sorted by context."""
    series: dict[str, list[tuple[int, float]]] = {}
    for key, value in table.items():
        match = re.fullmatch(r"(.+)@(\d+)", key)
        if match and isinstance(value, int | float):
            series.setdefault(match.group(1), []).append((int(match.group(2)), float(value)))
    return {p: sorted(v) for p, v in series.items()}


def _line_plot(series: dict, title: str, ylabel: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for policy, points in sorted(series.items()):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=policy)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def decode_latency(results_dir: Path) -> list[Path]:
    summary = _summary(results_dir, "decode_latency")
    series = _by_policy((summary or {}).get("ms_per_token", {}))
    if not series:
        return []
    return [_line_plot(series, f"decode, batch 1, {summary.get('budget', 0.1):g} kept (GPT 4x512, CPU)",
                       "ms / token", results_dir / "decode_ms_per_token.png")]


def prefill(results_dir: Path) -> list[Path]:
    summary = _summary(results_dir, "prefill")
    series = _by_policy((summary or {}).get("ttft_s", {}))
    if not series:
        return []
    return [_line_plot(series, "prefill: time to first token", "seconds", results_dir / "prefill_ttft.png")]


def quality_vs_kv(results_dir: Path) -> list[Path]:
    """`points`: [{family, model, workload, policy, kv_fraction, value, ci_low, ci_high, metric}].

    One PNG per workload with one panel per model family (a policy's line never joins points of two
    different models), each panel with its own Pareto front; a policy has the same colour in every panel."""
    summary = _summary(results_dir, "quality_vs_kv")
    points = (summary or {}).get("points") or []
    written = []
    colours = {name: f"C{i}" for i, name in enumerate(sorted({p["policy"] for p in points}))}
    for workload in sorted({p["workload"] for p in points}):
        rows = [p for p in points if p["workload"] == workload and p.get("value") is not None]
        if not rows:
            continue
        metric = rows[0].get("metric", "accuracy")
        families = sorted({p.get("family", "-") for p in rows})
        fig, axes = plt.subplots(1, len(families), figsize=(4.6 * len(families) + 0.6, 4.0), dpi=110,
                                 sharey=True, squeeze=False)
        for ax, family in zip(axes[0], families, strict=True):
            fam_rows = [p for p in rows if p.get("family", "-") == family]
            for policy in sorted({p["policy"] for p in fam_rows}):
                ps = sorted((p for p in fam_rows if p["policy"] == policy), key=lambda p: p["kv_fraction"])
                xs = [p["kv_fraction"] for p in ps]
                ys = [p["value"] for p in ps]
                err = [[max(0.0, p["value"] - p.get("ci_low", p["value"])) for p in ps],
                       [max(0.0, p.get("ci_high", p["value"]) - p["value"]) for p in ps]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=policy, color=colours[policy])
            front = _pareto(fam_rows, higher_is_better=metric != "perplexity")
            if len(front) > 1:
                ax.plot([p["kv_fraction"] for p in front], [p["value"] for p in front], "k--", lw=0.8,
                        label="Pareto front")
            ax.set_xscale("log")
            ax.set_xlabel("physical KV bytes / full cache")
            ax.set_title(f"{workload}: {family}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel(metric + " (95% interval)")
        fig.tight_layout()
        path = results_dir / f"pareto_{re.sub(r'[^A-Za-z0-9_@.-]', '_', workload)}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _pareto(rows: list[dict], higher_is_better: bool) -> list[dict]:
    """Points no other point beats on both axes (less KV, better value), by KV fraction."""
    best, front = None, []
    for p in sorted(rows, key=lambda r: (r["kv_fraction"], -r["value"] if higher_is_better else r["value"])):
        v = p["value"] if higher_is_better else -p["value"]
        if best is None or v > best:
            front.append(p)
            best = v
    return front


def draw_all(results_dir: Path) -> list[Path]:
    for stale in results_dir.glob("*.png"):
        stale.unlink()
    return decode_latency(results_dir) + prefill(results_dir) + quality_vs_kv(results_dir)
