"""StreamingLLM: attention sinks + a window of the most recent tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from nats_model.engine.cache import LayerStore
from nats_model.policies.base import Policy, Step, recent_mask, run_state
from nats_model.rope import apply_rope, rope_cos_sin

POSITION_MODES = ("original", "rerotate")


@dataclass
class StreamingLLMPolicy(Policy):
    """StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks",
    ICLR 2024). Every head keeps the first `n_sink` tokens of its sequence (the attention sinks)
    and the most recent ones, `budget_for(seen)` tokens in all (sinks first: with a budget
    smaller than `n_sink` only that many sinks). `positions="original"`: cached keys keep the
    RoPE positions they were written with. `positions="rerotate"` (the paper's cache): positions
    are reassigned inside the cache, the i-th kept token (by original order) sits at position i
    and a new token at the cache length, so cached keys are re-rotated by the position delta
    after each eviction (exact only for plain RoPE, `nats_model.rope` layout).
    """

    n_sink: int = 4
    positions: str = "original"
    rope_theta: float | None = None
    _split_cache: tuple | None = run_state()  # per step: see `_split`

    name: ClassVar[str] = "streaming_llm"
    # streaming: the paper's (evict every step); prompt/context: sinks + window once, then decode keeps evicting
    protocols: ClassVar[tuple[str, ...]] = ("streaming", "prompt", "context")
    default_protocol: ClassVar[str] = "streaming"
    decode_evicts: ClassVar[bool] = True

    @property
    def aux_fields(self) -> tuple[str, ...]:  # per-slot RoPE position, only when re-rotating
        return ("rope_pos",) if self.positions == "rerotate" else ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_sink, bool) or not isinstance(self.n_sink, int) or self.n_sink < 0:
            raise ValueError(f"streaming_llm: n_sink must be an int >= 0, got {self.n_sink!r}")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"streaming_llm: positions must be one of {POSITION_MODES}, got {self.positions!r}")
        if self.budget_tokens is not None and self.budget_tokens <= self.n_sink:
            raise ValueError(f"streaming_llm: budget_tokens ({self.budget_tokens}) must exceed n_sink ({self.n_sink})")

    def rope_positions(self, positions: torch.Tensor, kept_per_seq: torch.Tensor,
                       valid: torch.Tensor) -> torch.Tensor:
        if self.positions == "original":
            return positions
        # new tokens go after the kept ones: kept count + rank among the step's real tokens
        return kept_per_seq[:, None] + (valid.long().cumsum(1) - 1).clamp(min=0)

    def _sinks_recent(self, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sinks, recent) counts per segment."""
        return self._split(seen)[:2]

    def _split(self, seen: torch.Tensor) -> tuple:
        """Once per step (all layers share `seen`): sinks, recent, their sum (the kept count), the
        position that leaves the recent window when one more token arrives (n_seg, 1), min(recent),
        and the kept count when all segments share it (else -1)."""
        cached = self._split_cache
        if cached is None or cached[0] is not seen:
            keep = self.budget_for(seen).minimum(seen)
            sinks = keep.clamp(max=self.n_sink)
            recent = keep - sinks
            lo, hi = (int(x) for x in keep.aminmax()) if keep.numel() else (0, 0)
            common = lo if lo == hi else -1  # the kept count when every segment has the same
            cached = (seen, sinks, recent, keep, (seen - recent - 1)[:, None], int(recent.min()) if recent.numel() else 0,
                      common)
            self._split_cache = cached
        return cached[1:]

    def select(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        if self.positions == "rerotate":  # remember the position each new key was rotated at
            rank = (step.q_valid.long().cumsum(1) - 1).clamp(min=0)
            before = store.lens - step.q_valid.sum(1)
            new = step.new_slots >= 0
            store.aux["rope_pos"][step.new_slots[new]] = (before[:, None] + rank)[new].float()
        over, most = self.over_budget(store, step)  # over None: every segment is `most` above the budget
        if most <= 0:
            return None
        sinks, recent, keep, leaving, min_recent, common_keep = self._split(step.seen)
        pos = store.rows(store.pos, fill=-1)
        if most == 1 and min_recent > 0:
            # Decode fast path: at most one token over per segment, and it can only be the one that
            # just left the recent window (position seen - recent - 1): name its slot directly.
            hit = pos == leaving  # (n_seg, row_cap)
            if over is None:  # all segments drop one
                found = hit.nonzero()  # (hits, 2) in row order; positions are unique within a segment
                if found.shape[0] == hit.shape[0]:  # so one hit in every row
                    return found[:, 1]
            else:
                need = over == 1
                if bool((hit.any(1) | ~need).all()):
                    return torch.where(need, hit.byte().argmax(1), -1)
        return (pos < sinks[:, None]) | recent_mask(pos, step.seen, recent)

    def after_compact(self, store: LayerStore, step: Step) -> None:
        if self.positions != "rerotate":
            return
        if self.rope_theta is None:
            raise ValueError("streaming_llm: positions='rerotate' needs rope_theta (the engine sets it "
                             "from the model; this model's RoPE is not plain)")
        seen = step.seen
        sinks, _ = self._sinks_recent(seen)
        pos = store.rows(store.pos, fill=0)
        lens = store.lens
        # rank of each kept token in original order: sinks keep theirs, the recent window follows
        rank = torch.where(pos < sinks[:, None], pos, sinks[:, None] + pos - (seen - (lens - sinks))[:, None])
        old = store.rows(store.aux["rope_pos"])
        delta = (rank.float() - old) * store.valid_rows()
        moved = delta != 0
        if not bool(moved.any()):
            return
        idx = store.row_index[moved]
        cos, sin = rope_cos_sin(delta[moved], store.head_dim, self.rope_theta, dtype=store.k.dtype)
        store.k[idx] = apply_rope(store.k[idx], cos, sin)
        store.aux["rope_pos"][idx] = rank[moved].float()
