"""SnapKV: compress the prompt once, from the attention of its last queries (the observation window)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from nats_model.engine.cache import LayerStore
from nats_model.policies.base import Policy, Step, drop_lowest, run_state

POOLINGS = ("max", "avg")


@dataclass
class SnapKVPolicy(Policy):
    """SnapKV (Li et al., "SnapKV: LLM Knows What You Are Looking for Before Generation", NeurIPS
    2024). At the end of prefill, per (layer, sequence, KV head), with the L prompt tokens: the
    attention of the last `window_size` prompt queries (the observation window) on each earlier
    prompt key is summed over those queries and, for GQA, over the query heads of the KV head's
    group; the scores of the L - window keys before the window are pooled along the keys
    (`pooling` "max" or "avg", `kernel_size`, stride 1, padding kernel_size // 2 with -inf / zeros
    as `max_pool1d` / `avg_pool1d(count_include_pad=True)` do); the top `budget - window` of them
    (ties: the earlier position) and the window itself are kept, the rest dropped. Nothing happens
    when L <= budget. With a fractional budget smaller than the window only the last `budget` window
    tokens are kept. Decode tokens are appended and never evicted (as the original: the budget
    applies to the prompt only). Prompt chunks are observed, not evicted, until the last one, so
    chunked prefill keeps the same set as prefill at once; `score_run()` compresses at the end
    of its `prompt_len` prompt and never without one (streaming has no end of prompt). The compression
    runs at `Policy.compress_point` (the end of the prompt, or of the context under "context"); earlier
    prefill chunks and the question's chunks after it are observed only.
    """

    window_size: int = 32
    kernel_size: int = 7
    pooling: str = "max"
    # per layer: the latest <= window_size prompt queries of earlier chunks, (q (n_seg, g, n, hd), q_pos,
    # q_valid (n_seg, n)). Kept instead of their attention rows (n_seg, n, row_cap), which grow with the
    # cache; recomputed only when the last chunk is shorter than the window.
    _window_queries: dict = run_state(dict)

    name: ClassVar[str] = "snapkv"
    # one compression at the end of the prompt (today: "prompt") or of the context; no streaming form
    # (there is no end of prompt to observe from); decode tokens are appended, never evicted
    protocols: ClassVar[tuple[str, ...]] = ("prompt", "context")
    default_protocol: ClassVar[str] = "prompt"
    decode_evicts: ClassVar[bool] = False
    observe: ClassVar[str] = "probs"

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("window_size", "kernel_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.name}: {field} must be an int >= 1, got {value!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"{self.name}: kernel_size must be odd (same-length pooling), got {self.kernel_size}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{self.name}: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.budget_tokens is not None and self.budget_tokens <= self.window_size:
            raise ValueError(f"{self.name}: budget_tokens ({self.budget_tokens}) must exceed window_size "
                             f"({self.window_size})")

    @property
    def probs_rows(self) -> int:  # the observation window is all it reads of a step's probs
        return self.window_size

    def select(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        if not step.prefill:
            return None  # decode: appended, never evicted
        W = self.window_size
        buf = self._window_queries
        prev = buf.pop(step.layer, None)
        if not self.compress_point(step):  # observe: remember the latest window_size queries
            latest = (step.q[:, :, -W:], step.q_pos[:, -W:], step.q_valid[:, -W:])
            if prev is not None and step.q.shape[2] < W:  # this chunk alone does not fill the window
                latest = (torch.cat([prev[0], latest[0]], 2)[:, :, -W:], torch.cat([prev[1], latest[1]], 1)[:, -W:],
                          torch.cat([prev[2], latest[2]], 1)[:, -W:])
            buf[step.layer] = tuple(x.clone() for x in latest)  # not views: the chunk's tensors can go
            return None
        rows = step.probs.sum(1)[:, -W:]  # (n_seg, <= W, P): summed over the GQA group, zero for padding queries
        need = W - rows.shape[1]
        if prev is not None and need > 0:  # the window reaches back into earlier chunks
            prev_rows = self._attention_rows(store, *(x[:, :, -need:] if x.dim() == 4 else x[:, -need:] for x in prev),
                                             step.scale or step.q.shape[-1] ** -0.5)
            width = max(prev_rows.shape[2], rows.shape[2])
            rows = torch.cat([F.pad(prev_rows, (0, width - prev_rows.shape[2])),
                              F.pad(rows, (0, width - rows.shape[2]))], 1)
        lens, budget = store.lens, self.step_budget(step)
        if bool((lens <= budget).all()):
            return None
        n_win = torch.minimum(budget.clamp(max=self.window_size), lens)  # (n_seg,) observation window kept
        score = rows.sum(1)[:, :store.row_cap]  # (n_seg, row_cap) attention from the window's queries
        pos = store.rows(store.pos, fill=torch.iinfo(torch.long).max).masked_fill(
            ~store.valid_rows(), torch.iinfo(torch.long).max)
        order = pos.argsort(dim=1)  # rows in position order, unoccupied last
        s = score.gather(1, order)
        j = torch.arange(order.shape[1], device=order.device)[None, :]
        prefix = j < (lens - n_win)[:, None]  # sorted index before the observation window
        if self.pooling == "max":
            pooled = F.max_pool1d(s.masked_fill(~prefix, float("-inf"))[:, None], self.kernel_size, 1,
                                  self.kernel_size // 2)[:, 0]
        else:
            pooled = F.avg_pool1d(s.masked_fill(~prefix, 0.0)[:, None], self.kernel_size, 1,
                                  self.kernel_size // 2, count_include_pad=True)[:, 0]
        # the window and the unoccupied slots are never ranked; position rank j breaks exact ties
        keep_sorted = self.choose(store, step, pooled.masked_fill(~prefix, float("inf")), j.expand_as(pooled),
                                  j < lens[:, None], budget)
        keep = torch.empty_like(keep_sorted)
        keep.scatter_(1, order, keep_sorted)
        return keep

    def choose(self, store: LayerStore, step: Step, score: torch.Tensor, rank: torch.Tensor,
               valid: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        """Keep mask over the rows in position order (n_seg, row_cap): `score` is the pooled window
        attention of the keys before the window (+inf for the window and the unoccupied slots), `rank`
        the position rank, `valid` the occupied slots, `budget (n_seg,)` the step budget. SnapKV: the
        `lens - budget` lowest of each head go (ties: the later position)."""
        return drop_lowest(score, rank, store.lens - budget, valid)

    @staticmethod
    def _attention_rows(store: LayerStore, q: torch.Tensor, q_pos: torch.Tensor, q_valid: torch.Tensor,
                        scale: float) -> torch.Tensor:
        """Attention rows (n_seg, n, row_cap) of earlier prompt queries q (n_seg, g, n, hd), summed over
        the GQA group, as the engine computed them then: nothing is evicted before the end of the
        prompt, so the keys each saw (occupied slots at positions <= its own) are all still stored."""
        K = store.rows(store.k)  # (n_seg, row_cap, hd)
        n_seg, g, n, hd = q.shape
        s = torch.bmm(q.reshape(n_seg, g * n, hd), K.transpose(1, 2)).float().mul_(scale).view(n_seg, g, n, -1)
        pos = store.rows(store.pos, fill=-1)
        seen = store.valid_rows()[:, None, :] & (pos[:, None, :] <= q_pos[:, :, None])  # (n_seg, n, row_cap)
        p = torch.softmax(s.masked_fill(~seen[:, None], float("-inf")), dim=-1)
        return torch.where(q_valid[:, None, :, None] & seen[:, None], p, 0.0).sum(1)  # padding queries: zero
