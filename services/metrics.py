"""Metrics of one benchmark cell, gathered into the plain run-record fields of docs/DESIGN.md.

- accuracy: the mean of the workload's per-instance scores (None for `lm_text`, whose cell
  reports `extras.nll` / `extras.ppl` instead);
- KV memory from the cache engine: `kv_bytes_physical` (bytes the cache held at the end of an
  example, mean over examples; `extras.kv_bytes_physical_peak` is the largest peak of any
  example), `kv_bytes_full` (what a full cache would hold for the same tokens, mean) and
  `kept_fraction` (mean);
- latency: `ttft_s`, `tpot_s` (means over examples, as measured by the engine, which
  synchronises the device around its timers) and `tokens_per_s` = decode throughput (tokens
  after the first over their decode time, summed over examples; the engine's end-to-end rate
  incl. prefill is `extras.tokens_per_s_end_to_end`); for `lm_text` `tokens_per_s` is scored
  tokens per second; the evaluation runs one unmeasured warm-up call first;
- memory: `peak_memory_bytes` = the process's peak RSS during the cell (Linux `VmHWM`, reset at
  the start of the cell through `/proc/self/clear_refs`; where that reset is refused it is the
  process's lifetime peak and `extras.peak_rss_scope` says "process"); on CUDA it is
  `torch.cuda.max_memory_allocated` after a reset, and the RSS peak stays in `extras`.
Per-example details go to `extras.examples`.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def device_sync(device: Any) -> None:
    """Wait for queued work on `device` (CUDA); a no-op on the CPU."""
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(dev)


def _vm_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Peak memory of a measured region: `start()` resets the peaks, `read()` returns them.

    RSS: Linux `VmHWM` after writing "5" to `/proc/self/clear_refs` (resets the high-water
    mark to the current RSS); elsewhere `ru_maxrss` (the process's lifetime peak). CUDA:
    `torch.cuda.reset_peak_memory_stats` then `max_memory_allocated`.
    """

    def __init__(self, device: Any = "cpu") -> None:
        self.device = str(device)
        self.rss_scope = "process"

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.rss_scope = "cell" if _vm_hwm_bytes() is not None else "process"
        except OSError:
            self.rss_scope = "process"
        if self.device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats(torch.device(self.device))

    def read(self) -> dict[str, Any]:
        rss = _vm_hwm_bytes() if self.rss_scope == "cell" else None
        if rss is None:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        out: dict[str, Any] = {"peak_rss_bytes": int(rss), "peak_rss_scope": self.rss_scope,
                               "cuda_max_memory_allocated_bytes": None}
        if self.device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                out["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated(torch.device(self.device)))
        return out


def _num(value: Any) -> float | None:
    """A plain float from a number or a 0-d tensor; None for missing or NaN."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.float().mean().item() if getattr(value, "numel", lambda: 1)() > 1 else value.item()
    value = float(value)
    return None if math.isnan(value) else value


def _ints(tokens: Any) -> list[int] | None:
    """The generated token ids of the (single) sequence: `tokens (1, max_new_tokens)`."""
    if tokens is None or not hasattr(tokens, "tolist"):
        return None
    return [int(t) for t in tokens[0].tolist()]


def _kept(result: Any) -> list[list[int]] | None:
    """Tokens each (layer, KV head) held at the end, of the single sequence: `(n_layers, Hkv)`
    from the engine's `kept_per_layer_head (n_layers, B=1, Hkv)`."""
    kept = getattr(result, "kept_per_layer_head", None)
    if kept is None or not hasattr(kept, "tolist"):
        return None
    return [[int(n) for n in layer] for layer in kept[:, 0].tolist()]


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


@dataclass
class CellMetrics:
    """Accumulates the per-example measurements of one cell and summarises them as record fields."""

    device: str = "cpu"
    examples: list[dict] = field(default_factory=list)
    nll_sum: float = 0.0
    nll_tokens: int = 0
    nll_nan: int = 0
    _memory: PeakMemory | None = None
    _t0: float = 0.0

    def start(self) -> None:
        """Reset the memory peaks and start the wall clock of the cell."""
        self._memory = PeakMemory(self.device)
        self._memory.start()
        self._t0 = time.perf_counter()

    def add_generation(self, instance: Any, result: Any, prediction: str, score: float,
                       prompt_tokens: int, new_tokens: int) -> None:
        """One generated example: the engine's GenerationResult and the workload's score."""
        ttft, tpot = _num(getattr(result, "ttft_s", None)), _num(getattr(result, "tpot_s", None))
        if new_tokens <= 1:
            tpot = None  # no decode step after the first token: no time per output token
        self.examples.append({
            "id": instance.id, "content_hash": instance.content_hash, "score": float(score),
            "prediction": prediction, "answer": instance.answer, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "ttft_s": ttft, "tpot_s": tpot,
            "tokens_per_s": _num(getattr(result, "tokens_per_s", None)),
            "kv_bytes_physical": _num(getattr(result, "kv_bytes_physical", None)),
            "kv_bytes_physical_peak": _num(getattr(result, "kv_bytes_physical_peak", None)),
            "kv_bytes_full": _num(getattr(result, "kv_bytes_full", None)),
            "kept_fraction": _num(getattr(result, "kept_fraction", None)),
            "depth": instance.meta.get("depth"),
            # exact outputs, so a change in what the engine computes is visible (tests/golden)
            "tokens": _ints(getattr(result, "tokens", None)),
            "kept_per_layer_head": _kept(result),
        })

    def add_nll(self, instance: Any, nll: Any, elapsed_s: float, stats: Any = None) -> None:
        """One scored text window: per-token NLL (tensor or list), its wall time, and the
        engine's KV statistics when the scorer returns them."""
        raw = [float(x) for x in (nll.flatten().tolist() if hasattr(nll, "flatten") else nll)]
        values = [x for x in raw if not math.isnan(x)]  # NaN marks padding in the engine's output
        self.nll_nan += len(raw) - len(values)
        total = sum(values)
        self.nll_sum += total
        self.nll_tokens += len(values)
        mean = total / len(values) if values else None
        self.examples.append({
            "id": instance.id, "content_hash": instance.content_hash, "score": mean,
            "nll": mean, "scored_tokens": len(values), "elapsed_s": elapsed_s,
            "tokens_per_s": len(values) / elapsed_s if elapsed_s > 0 else None,
            "kv_bytes_physical": _num(getattr(stats, "kv_bytes_physical", None)),
            "kv_bytes_physical_peak": _num(getattr(stats, "kv_bytes_physical_peak", None)),
            "kv_bytes_full": _num(getattr(stats, "kv_bytes_full", None)),
            "kept_fraction": _num(getattr(stats, "kept_fraction", None)),
            "kept_per_layer_head": _kept(stats),
        })

    def summary(self, kind: str = "generate") -> tuple[dict, dict]:
        """(record metric fields, extras) over the examples seen so far."""
        ex = self.examples
        memory = self._memory.read() if self._memory else PeakMemory(self.device).read()
        peak = memory["cuda_max_memory_allocated_bytes"] or memory["peak_rss_bytes"]
        phys = _mean([e["kv_bytes_physical"] for e in ex])
        full = _mean([e["kv_bytes_full"] for e in ex])
        peaks = [e["kv_bytes_physical_peak"] for e in ex if e["kv_bytes_physical_peak"] is not None]
        fields: dict[str, Any] = {
            "accuracy": None, "kv_bytes_physical": None if phys is None else int(round(phys)),
            "kv_bytes_full": None if full is None else int(round(full)),
            "kept_fraction": _mean([e["kept_fraction"] for e in ex]),
            "ttft_s": None, "tpot_s": None, "tokens_per_s": None,
            "peak_memory_bytes": int(peak), "n_examples": len(ex),
        }
        extras: dict[str, Any] = {
            "kv_bytes_physical_peak": int(max(peaks)) if peaks else None,
            "wall_s": time.perf_counter() - self._t0 if self._t0 else None,
            **memory,
        }
        if kind == "nll":
            nll = self.nll_sum / self.nll_tokens if self.nll_tokens else None
            ppl = math.exp(min(nll, 700.0)) if nll is not None else None
            extras.update(nll=nll, ppl=ppl, scored_tokens=self.nll_tokens, nll_nan_tokens=self.nll_nan)
            fields["tokens_per_s"] = _mean([e["tokens_per_s"] for e in ex])
        else:
            scores = [e["score"] for e in ex]
            fields["accuracy"] = statistics.fmean(scores) if scores else None
            fields["ttft_s"] = _mean([e["ttft_s"] for e in ex])
            fields["tpot_s"] = _mean([e["tpot_s"] for e in ex])
            fields["tokens_per_s"] = _decode_rate(ex)
            ttfts = [e["ttft_s"] for e in ex if e["ttft_s"] is not None]
            extras["ttft_s_median"] = statistics.median(ttfts) if ttfts else None
            extras["tokens_per_s_end_to_end"] = _mean([e["tokens_per_s"] for e in ex])
        extras["examples"] = ex
        return fields, extras


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats replaced by None (recursively), so it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _decode_rate(examples: list[dict]) -> float | None:
    """Generated tokens per second of decode time, over all examples: sum(tokens after the
    first) / sum(tokens after the first x TPOT); falls back to the engine's per-example mean."""
    tokens = time_s = 0.0
    for e in examples:
        if e["tpot_s"] is not None and e["new_tokens"] > 1:
            tokens += e["new_tokens"] - 1
            time_s += (e["new_tokens"] - 1) * e["tpot_s"]
    if time_s > 0:
        return tokens / time_s
    return _mean([e["tokens_per_s"] for e in examples])
