"""The KV-cache policy interface every policy file implements.

A policy is a `@dataclass` whose fields are its hyperparameters. The engine
(`nats_model.engine.kv_engine.KVEngine`) calls, for every attention layer and every step (a prefill
chunk or one decode token):

1. `KVCache` stores the step's new keys/values (padding never stored);
2. the current queries attend over the kept tokens plus the new ones (causal by original position,
   and by `visible(store, step)` when the policy sets `masks_attention`);
3. `select(store, step)` returns which slots survive (`(n_seg, row_cap)` bool, or None = keep all,
   or a long `(n_seg,)` row slot to drop per segment, -1 for none);
4. the store drops the others (swap-remove) and shrinks when over the memory bound;
5. `after_compact(store, step)` may edit the survivors (e.g. StreamingLLM re-rotates keys).

Everything a policy needs arrives in `Step` in row form `(n_seg, row_cap)` with segment
`s = b * Hkv + h`; per-slot state that must survive across steps is kept in the store's `aux`
fields named in `aux_fields` (zero for new tokens; moved with the tokens on eviction; float32
unless `aux_dtypes` gives a field another dtype). State a policy keeps between steps of one run is a
`run_state()` field (not a parameter: no __init__ argument, not in repr or equality), recreated by
`Policy.reset` before every run; what `bind_model` reads from the model is a `model_state()` field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from nats_model.engine.cache import LayerStore

# Compression protocols (the cell parameter `compress`): "streaming" evicts as tokens arrive (prefill
# chunks and decode), "prompt" prefills the whole prompt and compresses once at its end, "context"
# compresses at the end of the context, before the question is appended (kvpress' default).
PROTOCOLS: tuple[str, ...] = ("streaming", "prompt", "context")


def run_state(factory=lambda: None) -> Any:
    """A per-run state field of a policy: `factory()` at construction and again at every `reset`;
    not a hyperparameter (init=False), left out of repr and equality."""
    return field(default_factory=factory, init=False, repr=False, compare=False, metadata={"run_state": True})


def model_state(default: Any = None) -> Any:
    """What a policy reads from the model in `bind_model` (kept across runs until the next bind);
    not a hyperparameter, left out of repr and equality."""
    return field(default=default, init=False, repr=False, compare=False)


@dataclass
class Step:
    """What one layer's step shows the policy. Row-form tensors are `(n_seg, row_cap)`.

    layer: layer index. prefill / last_prefill: a prompt chunk / the prompt's last chunk.
    seen (n_seg,): tokens seen by the segment's sequence, this step included.
    q_pos, q_valid (n_seg, T): original positions of the step's queries / False for padding.
    new_slots (n_seg, T): flat slot of each new token (-1 for padding).
    attn_sum (n_seg, P) or None: attention each slot received this step, summed over the
      step's real queries and over the query heads of the KV head's GQA group (observe="sum");
      P <= row_cap as for probs (`LayerStore.add_rows` takes it as it is).
    probs (n_seg, g, R, P) or None: per query head and query (observe="probs"; padding queries are
      zero) for the step's last R = min(T, policy.probs_rows or T) queries; P <= row_cap: the slots
      past P are unoccupied (P is the common length when every segment holds the same count, else
      row_cap).
    type_logits (B, Hkv, T, 3) or None: NAtS scorer logits of the new tokens.
    q (n_seg, g, T, hd), k_new / v_new (n_seg, T, hd): the step's queries and new keys/values.
    n_kv_heads: KV heads per sequence (to group a sequence's segments, e.g. layer-wise scores).
    evict / compress_point: see the fields (`nats_model.engine.generation`, "Compression protocols").
    """

    layer: int
    prefill: bool
    last_prefill: bool
    seen: torch.Tensor
    q_pos: torch.Tensor
    q_valid: torch.Tensor
    new_slots: torch.Tensor
    attn_sum: torch.Tensor | None
    probs: torch.Tensor | None
    type_logits: torch.Tensor | None
    q: torch.Tensor
    k_new: torch.Tensor
    v_new: torch.Tensor
    n_kv_heads: int = 0  # KV heads per sequence (segment s = b * n_kv_heads + h); 0 = not given
    scale: float = 0.0  # the attention's softmax scale (0 = not given: head_dim ** -0.5)
    # Set by the engine from the compression protocol (`compress`): False = keep every token this step
    # (statistics still update); compress_point: the step where a one-shot compression runs (the end of
    # the prompt, or of the context under "context"); None = not given: the prompt's last chunk.
    evict: bool = True
    compress_point: bool | None = None


@dataclass
class Policy:
    """Base of all KV policies: budget handling and default (keep-everything) hooks.

    Subclasses set `name` (registry key), `observe` ("none", "sum" or "probs": what attention
    the engine must compute for `Step`), `aux_fields` (per-slot state) and implement `select`.
    Budget: `budget` is a fraction of the tokens seen (0 < budget <= 1), `budget_tokens` an
    absolute count per (layer, sequence, KV head); `needs_budget` policies require exactly one.
    """

    budget: float | None = None
    budget_tokens: int | None = None
    # per step: (seen, {layer: [seen, budget, common budget]}) (see `_budget_entry`)
    _budget_cache: tuple | None = run_state()

    name: ClassVar[str] = ""
    observe: ClassVar[str] = "none"
    aux_fields: ClassVar[tuple[str, ...]] = ()
    aux_dtypes: ClassVar[dict[str, torch.dtype]] = {}  # aux fields that are not float32
    needs_budget: ClassVar[bool] = True
    masks_attention: ClassVar[bool] = False  # True: the engine calls `visible` before attention
    # observe="probs": how many of a step's last queries the policy reads (None: all); the engine
    # computes only those rows, so a prefill chunk never needs a (chunk x cache) probability tensor
    probs_rows: ClassVar[int | None] = None
    # compression protocols the policy supports (a subset of PROTOCOLS), the one it ran before the
    # `compress` parameter existed (old results keep their meaning), and whether decode steps keep
    # evicting to the budget under "prompt"/"context" (False: the cache grows during decode after the one
    # compression, as kvpress does). The engine turns these into `Step.evict`.
    protocols: ClassVar[tuple[str, ...]] = PROTOCOLS
    default_protocol: ClassVar[str] = "streaming"
    decode_evicts: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget_tokens is not None:
            raise ValueError(f"{self.name}: give budget (fraction) or budget_tokens, not both")
        if self.budget is not None and not (isinstance(self.budget, int | float) and 0 < self.budget <= 1):
            raise ValueError(f"{self.name}: budget must be a fraction in (0, 1], got {self.budget!r}")
        if self.budget_tokens is not None and (
            isinstance(self.budget_tokens, bool) or not isinstance(self.budget_tokens, int)
            or self.budget_tokens < 1
        ):
            raise ValueError(f"{self.name}: budget_tokens must be an int >= 1, got {self.budget_tokens!r}")
        if self.needs_budget and self.budget is None and self.budget_tokens is None:
            raise ValueError(f"{self.name}: needs a budget: budget=<fraction in (0, 1]> or budget_tokens=<int >= 1>")

    # True when `budget_for` depends on the layer (PyramidKV): the step budget is then computed per layer
    layer_budgets: ClassVar[bool] = False

    def budget_for(self, seen: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Kept-token budget per segment (long, like `seen`); `seen` when there is no budget. `layer`:
        the layer index (`Step.layer`), for policies whose budget depends on it (`layer_budgets`); the
        default is the same for every layer."""
        if self.budget_tokens is not None:
            return torch.full_like(seen, self.budget_tokens)
        if self.budget is not None:
            return torch.ceil(seen.double() * self.budget - 1e-9).long().clamp(min=1)
        return seen.clone()

    def step_budget(self, step: Step) -> torch.Tensor:
        """`budget_for(step.seen, step.layer)`, computed once per step (once per layer and step when
        `layer_budgets`; all layers share `step.seen`)."""
        return self._budget_entry(step)[1]

    def step_budget_common(self, step: Step) -> int:
        """The step's budget when every segment has the same, else -1 (once per step, like
        `step_budget`): with a common kept count `n`, every segment is `n - budget` over, no tensor op."""
        entry = self._budget_entry(step)
        if entry[2] is None:
            budget = entry[1]
            lo, hi = (int(x) for x in budget.aminmax()) if budget.numel() else (0, 0)
            entry[2] = lo if lo == hi else -1
        return entry[2]

    def _budget_entry(self, step: Step) -> list:
        """[seen, budget_for(seen, layer), common budget or None when not computed yet], cached per step
        (and per layer when `layer_budgets`)."""
        cache = self._budget_cache
        layer = step.layer if self.layer_budgets else None
        if cache is None or cache[0] is not step.seen:
            cache = self._budget_cache = (step.seen, {})
        entry = cache[1].get(layer)
        if entry is None:
            entry = cache[1][layer] = [step.seen, self.budget_for(step.seen, layer), None]
        return entry

    # ----------------------------------------------------- shared eviction steps
    @staticmethod
    def evicting(step: Step) -> bool:
        """Whether this step may evict (`Step.evict`, set by the engine from the compression protocol;
        True when the engine does not give it). A policy still updates its statistics when it is False."""
        return bool(getattr(step, "evict", True))

    @staticmethod
    def compress_point(step: Step) -> bool:
        """Whether this step is where a one-shot compression (SnapKV and the policies built on it) runs:
        `Step.compress_point` when the engine gives it, else the prompt's last chunk; never when the step
        may not evict."""
        if not Policy.evicting(step):
            return False
        flag = getattr(step, "compress_point", None)
        return bool(step.prefill and step.last_prefill) if flag is None else bool(flag)

    def over_budget(self, store: LayerStore, step: Step) -> tuple[torch.Tensor | None, int]:
        """(n_drop, most): tokens each segment holds above its budget, (n_seg,) long, and the largest of
        them. n_drop is None when every segment holds the same count and has the same budget (each is
        `most` over, found without a tensor op: the decode fast path). (None, 0) when the step may not
        evict (`evicting`)."""
        if not self.evicting(step):
            return None, 0
        n, common_budget = store.common_len(), self.step_budget_common(step)
        if n >= 0 and common_budget >= 0:
            return None, n - common_budget
        n_drop = store.lens - self.step_budget(step)
        return n_drop, int(n_drop.max()) if n_drop.numel() else 0

    def budget_label(self) -> str:
        if self.budget_tokens is not None:
            return f"{self.budget_tokens} tokens"
        return "all" if self.budget is None else f"{self.budget:g}"

    # ------------------------------------------------------------------ hooks
    def reset(self) -> None:
        """Forget per-run state (called once per generate/score call, before the first step): every
        `run_state()` field gets a fresh value. Subclasses that override it call `super().reset()`."""
        for f in fields(self):
            if f.metadata.get("run_state"):
                setattr(self, f.name, f.default_factory())

    def bind_model(self, model) -> None:
        """Read what the policy needs from the model (a GPT or HF causal LM); called by generate/score
        before `reset`. Default: nothing."""

    def rope_positions(self, positions: torch.Tensor, kept_per_seq: torch.Tensor,
                       valid: torch.Tensor) -> torch.Tensor:
        """RoPE positions `(B, T)` the model uses for the step's tokens (default: the original ones).
        kept_per_seq (B,): tokens layer 0 KV head 0 holds before the step; valid (B, T)."""
        return positions

    def visible(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        """Only when `masks_attention`: called after the step's tokens are stored and before they
        attend (`step.attn_sum`/`probs` are None then). Returns (n_seg, T, row_cap) bool: which kept
        slots each of the step's queries may see, on top of causality (e.g. NAtS types inside a
        prefill chunk), or None."""
        return None

    def select(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        """Which occupied slots survive: keep (n_seg, row_cap) bool, or None to keep all, or (fast
        path for one eviction per segment) a long (n_seg,) row-form slot to drop, -1 for none."""
        return None

    def after_compact(self, store: LayerStore, step: Step) -> None:
        """Called after eviction; may edit the surviving slots (keys, aux)."""


def recent_mask(pos_rows: torch.Tensor, seen: torch.Tensor, n_recent: torch.Tensor) -> torch.Tensor:
    """(n_seg, row_cap) True for the `n_recent (n_seg,)` most recent original positions."""
    return pos_rows >= (seen - n_recent)[:, None]


# The one tie rule of every score-ranked eviction: the lowest score goes first and, on an exact tie,
# the later original position (the newer token) goes first. Slots that must not be dropped (unoccupied,
# protected) carry the score +inf.


def lowest_first(score: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(n_seg, W) column order of each row: lowest `score` first, ties to the larger `pos` (any
    long tiebreak, larger goes first; unique per row among the slots that may be dropped)."""
    by_pos = pos.argsort(dim=1, descending=True)  # later positions first
    return by_pos.gather(1, score.gather(1, by_pos).argsort(dim=1, stable=True))


def drop_lowest(score: torch.Tensor, pos: torch.Tensor, n_drop: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
    """Keep mask (n_seg, W): the `valid` slots less the `n_drop (n_seg,)` first of `lowest_first`."""
    order = lowest_first(score, pos)
    place = torch.empty_like(order)
    place.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return valid & ~(place < n_drop.clamp(min=0)[:, None])


def lowest_one(score: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(n_seg,) column of each row's first slot in `lowest_first` order (the decode fast path: one
    token per segment)."""
    low = score == score.min(1, keepdim=True).values
    return torch.where(low, pos, -1).argmax(1)


@dataclass
class ScorerPolicy(Policy):
    """A policy that keeps, per (layer, sequence, KV head), the budget's highest-scoring tokens and
    drops the others (ties: the later position first), on every step that may evict (`Step.evict`).
    A subclass says how it scores (`score`), optionally which slots are always kept (`protect`:
    they count toward the budget) and what statistics it gathers on every step (`observe_step`,
    called first, also when the step does not evict).
    """

    def observe_step(self, store: LayerStore, step: Step) -> None:
        """Update per-slot or per-layer statistics from the step (default: none)."""

    def score(self, store: LayerStore, step: Step) -> torch.Tensor:
        """(n_seg, row_cap) float: higher = more worth keeping; only occupied slots are read."""
        raise NotImplementedError

    def protect(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        """(n_seg, row_cap) bool: occupied slots never dropped by the score (None: none)."""
        return None

    def select(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        self.observe_step(store, step)
        n_drop, most = self.over_budget(store, step)
        if most <= 0:
            return None
        if most == 1 and n_drop is None:  # decode fast path: every segment holds n tokens and drops one
            n = store.common_len()
            score = self.score(store, step)[:, :n]
            protected = self.protect(store, step)
            if protected is not None:
                score = score.masked_fill(protected[:, :n], float("inf"))
            return lowest_one(score, store.rows(store.pos)[:, :n])
        valid = store.valid_rows()
        blocked = ~valid
        protected = self.protect(store, step)
        if protected is not None:
            blocked = blocked | protected
        score = self.score(store, step).float().masked_fill(blocked, float("inf"))
        pos = store.rows(store.pos, fill=-1)
        if most == 1:
            pick = lowest_one(score, pos)
            return pick if n_drop is None else torch.where(n_drop > 0, pick, -1)
        if n_drop is None:
            n_drop = torch.full_like(store.lens, most)
        return drop_lowest(score, pos, n_drop, valid)
