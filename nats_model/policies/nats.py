"""NAtS: the model's learned token types decide what every KV head keeps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from nats_model.engine.cache import LayerStore
from nats_model.engine.decode_attention import packed_invalid, packed_ready
from nats_model.mask import GLOBAL, LOCAL, SLIDING
from nats_model.policies.base import Policy, Step, drop_lowest, model_state, run_state
from nats_model.scorer import infer_types

DEFAULT_GLOBAL_BIAS = 0.1  # infer_types' default, used when neither the policy nor the model sets one
_RANK_STEP = 1 << 40  # eviction-order key: rank * _RANK_STEP + position
VISIBLE_ALWAYS = 1 << 62  # `visible_until` of a slot no query position bounds yet


def _fast_masks() -> bool:
    """The packed decode eviction (`_select_decode_packed`); NATSBENCH_FAST_MASKS=0: the row-form rule."""
    return os.environ.get("NATSBENCH_FAST_MASKS", "1") != "0"


@dataclass
class NatsPolicy(Policy):
    """NAtS (Deng & Lindauer, "Neural Attention Search", arXiv 2502.13251, NeurIPS 2025), inference
    cache of docs/METHOD.md ("Visibility", "Type scorer", "Inference cache"). Every new token of
    every (layer, sequence, KV head) gets a type from the layer's NAtS scorer (per-token logits from the
    model; `infer_types`: argmax after `global_bias` on the Global logit, position 0 Global). Global tokens
    stay for good, a Local token stays until the next Global token of its head arrives, a Sliding-window
    token stays for `window` steps: after a step that has seen positions 0..t the head holds exactly
    the keys a query at t+1 may see. Chunk variant (`chunk_size` C > 1): logits are averaged over
    each chunk of C positions (the scorer is linear, so this is the scorer of the pooled input), the
    first chunk is Global, and an unfinished chunk counts as Global (kept whole) until its last
    token arrives; a Local chunk is dropped when a later Global chunk completes. Inside a prefill
    chunk every query attends under the same rule (`visible`), so without a cap chunked prefill
    keeps the same set and gives the same outputs as prefill at once (and, for W >= C - 1, as the
    model's dense NAtS forward). The budget is what the types keep (reported by the engine).
    Optional hard cap `budget` / `budget_tokens`, applied after every step: when a
    head keeps more, it evicts Local tokens (oldest first), then Global tokens other than position 0
    (oldest first), then Sliding-window tokens (oldest first), then position 0. `window`,
    `global_bias`, `chunk_size` default to the model's config (`bind_model`; for Hugging Face models
    `config.nats_window`, `nats_global_bias`, `nats_chunk_size`); `chunk_size=1` forces token types.
    """

    window: int | None = None
    global_bias: float | None = None
    chunk_size: int | None = None
    # window / global_bias / chunk_size the model's config gives (`bind_model`)
    _model_settings: dict | None = model_state()
    # per layer: (last completed Global chunk (n_seg,), logit sum of the unfinished chunk (n_seg, 3))
    _state: dict = run_state(dict)
    # (step, what `_typed` returned for it): `visible` / `visible_until` and `select` type a step once
    _typed_step: tuple = run_state(lambda: (None, None))
    # (step, `visible_until`'s bounds): `select` reads the rule's keep set off it
    _until_step: tuple = run_state(lambda: (None, None))
    # once-per-step values every layer shares: (seen, leaving key), (q_pos, positions, position-0 mask)
    _leaving: tuple | None = run_state()
    _decode_pos: tuple | None = run_state()
    # ((bias, device), Global-bias logit row, order-key base per type), made once per run
    _consts: tuple | None = run_state()
    _fast: bool = run_state(_fast_masks)

    name: ClassVar[str] = "nats"
    observe: ClassVar[str] = "none"
    # nats_order: each slot's eviction-order key `order_key(type, pos)` (rank * 2^40 + position), which
    # also encodes its type (`type_of`): a decode step finds its cap candidate and any rule drop with
    # two passes over this one row instead of rebuilding the rule and the order from types and positions
    aux_fields: ClassVar[tuple[str, ...]] = ("nats_order",)
    aux_dtypes: ClassVar[dict[str, torch.dtype]] = {"nats_order": torch.long}
    needs_budget: ClassVar[bool] = False
    masks_attention: ClassVar[bool] = True
    # the types are decided as tokens arrive: streaming only
    protocols: ClassVar[tuple[str, ...]] = ("streaming",)
    default_protocol: ClassVar[str] = "streaming"
    decode_evicts: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window is not None and (isinstance(self.window, bool) or not isinstance(self.window, int)
                                        or self.window < 0):
            raise ValueError(f"nats: window must be None (from the model) or an int >= 0, got {self.window!r}")
        if self.global_bias is not None and (isinstance(self.global_bias, bool)
                                             or not isinstance(self.global_bias, int | float)):
            raise ValueError(f"nats: global_bias must be None (from the model) or a number, got {self.global_bias!r}")
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int)
                                            or self.chunk_size < 1):
            raise ValueError(f"nats: chunk_size must be None (from the model) or an int >= 1, got {self.chunk_size!r}")

    def bind_model(self, model) -> None:
        """Take window / global_bias / chunk_size from the model; ValueError when it has no NAtS scorers."""
        from nats_model.models.gpt import GPT

        cfg = getattr(model, "config", None)
        if isinstance(model, GPT):
            if cfg.attention != "nats":
                raise ValueError(f"nats: the model has no NAtS type scorers (GPTConfig.attention={cfg.attention!r}, "
                                 "needs 'nats')")
            found = {"window": cfg.window, "global_bias": cfg.global_bias, "chunk_size": cfg.chunk_size}
        else:
            found = {k: getattr(cfg, f"nats_{k}", None) for k in ("window", "global_bias", "chunk_size")}
        self._model_settings = {k: v for k, v in found.items() if v is not None}

    def settings(self) -> tuple[int, float, int]:
        """(window W, global bias, chunk size C; 1 = token types) in effect: policy field, else model."""
        model = self._model_settings or {}
        window = self.window if self.window is not None else model.get("window")
        if window is None:
            raise ValueError("nats: window unknown: give window=<int >= 0> or a model whose config has it "
                             "(GPT attention='nats', or a Hugging Face config with nats_window)")
        bias = self.global_bias if self.global_bias is not None else model.get("global_bias", DEFAULT_GLOBAL_BIAS)
        chunk = self.chunk_size if self.chunk_size is not None else model.get("chunk_size") or 1
        return int(window), float(bias), int(chunk)

    def visible(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        """(n_seg, T, row_cap): the rule of docs/METHOD.md ("Visibility") for every query of a chunk,
        with the types known at that query (a chunk completed at or before it has its type). None for
        a one-token step: everything kept is visible to the next query."""
        if step.q_pos.shape[1] == 1:
            self._typed(store, step)
            return None
        window, _, C = self.settings()
        ty = self._typed(store, step)
        m = step.q_pos[:, :, None]  # (n_seg, T, 1) query positions
        typ, pos, cid = ty["typ"][:, None, :], ty["pos"][:, None, :], ty["cid"][:, None, :]  # (n_seg, 1, row_cap)
        complete = (cid + 1) * C - 1 <= m  # the key's chunk was complete when the query came
        # last Global chunk completed strictly before each query: before the step, or inside it
        ends = (ty["abs_c"] + 1) * C - 1  # (n_seg, K) last token of each chunk the step touched
        g_step = ty["done"] & (ty["types_c"] == GLOBAL)
        before = (g_step[:, None, :] & (ends[:, None, :] < m)).long()  # (n_seg, T, K)
        last_g = torch.maximum(ty["last_global_before"][:, None],
                               torch.where(before.bool(), ty["abs_c"][:, None, :], -1).max(-1).values)  # (n_seg, T)
        return ~complete | (typ == GLOBAL) | ((typ == SLIDING) & (m <= pos + window)) \
            | ((typ == LOCAL) & (cid > last_g[:, :, None]))

    def visible_until(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        """(n_seg, row_cap) long: per slot, the last query position that may see it under the rule of
        `visible` (every key is seen by an interval of queries: from its own position, causally, up to
        this bound; `VISIBLE_ALWAYS` when no bound is known yet, -1 for unoccupied slots). Exactly
        `visible`: query m sees slot j iff m <= bound[j] (tests/engine/test_nats_fast_paths.py
        compares the two). O(row_cap + chunk) per segment, no (T, row_cap) tensor. None for a
        one-token step (as `visible`).

        Per slot of type-unit (chunk) c, with e(c) = (c + 1) * C - 1 its last position: an unfinished
        unit is visible up to e(c) - 1 whatever its type; Global: always; Sliding: up to
        max(e(c) - 1, pos + W); Local: up to the last position of the first Global unit after c that
        this step completes (always when there is none), never when a Global unit at or after c
        completed before the step."""
        if step.q_pos.shape[1] == 1:
            self._typed(store, step)
            return None
        window, _, C = self.settings()
        ty = self._typed(store, step)
        typ, pos, cid = ty["typ"], ty["pos"], ty["cid"]
        g_step = ty["done"] & (ty["types_c"] == GLOBAL)  # (n_seg, K) Global units the step completed
        K = g_step.shape[1]
        ar = torch.arange(K + 1, device=pos.device)
        # nxt[:, k]: the first Global unit of the step at step index >= k (K: none)
        cand = torch.where(torch.cat([g_step, g_step.new_zeros(g_step.shape[0], 1)], 1), ar, K)
        nxt = cand.flip(1).cummin(1).values.flip(1)  # (n_seg, K + 1)
        first = ty["abs_c"][:, :1]  # (n_seg, 1) absolute index of the step's first unit
        j = nxt.gather(1, (cid - first + 1).clamp(0, K))  # first Global unit of the step after the slot's
        local_end = torch.where(j < K, (first + j + 1) * C - 1, VISIBLE_ALWAYS)
        local_end = torch.where(cid <= ty["last_global_before"][:, None], -1, local_end)
        unit_end = (cid + 1) * C - 1
        bound = torch.where(typ == GLOBAL, VISIBLE_ALWAYS,
                            torch.where(typ == SLIDING, pos + window, local_end))
        bound = torch.maximum(bound, unit_end - 1)
        until = torch.where(store.valid_rows(), bound, -1)
        self._until_step = (step, until)  # `select` reads the rule's keep set off it
        return until

    def select(self, store: LayerStore, step: Step) -> torch.Tensor | None:
        window, _, _ = self.settings()
        ty = self._typed(store, step)
        if not self.evicting(step):  # typed (the state moves on), nothing dropped
            return None
        if ty.get("decode"):
            return self._select_decode(store, step, ty, window)
        occupied, typ, pos, cid, seen = store.valid_rows(), ty["typ"], ty["pos"], ty["cid"], step.seen
        until_step, until = self._until_step
        if until_step is step:  # `visible_until` ran for this step: the slots a query at seen may see
            keep = until >= seen[:, None]
        else:  # what a query at position seen (= t+1) may see
            keep = occupied & ((typ == GLOBAL) | ((typ == LOCAL) & (cid > ty["last_global"][:, None]))
                               | ((typ == SLIDING) & (pos >= (seen - window)[:, None])))
        if self.budget is not None or self.budget_tokens is not None:
            keep = self._cap(keep, typ, pos, self.step_budget(step))
        if bool((keep.sum(1) == store.lens).all()):
            return None
        return keep

    def _typed(self, store: LayerStore, step: Step) -> dict:
        """Types the step's tokens once per (layer, step) (visible and select share it): updates the
        layer state and the slots' order keys; returns row-form typ/pos/cid and the step's chunks."""
        cached_step, cached = self._typed_step
        if cached_step is step:
            return cached
        if step.type_logits is None:
            raise ValueError(f"nats: layer {step.layer} gave no NAtS type logits: the model has no type scorers "
                             "(use a GPT with attention='nats' or attach scorers to the Hugging Face model)")
        _, bias, C = self.settings()
        B, Hkv, T, _ = step.type_logits.shape
        if T != step.q_pos.shape[1]:
            raise ValueError(f"nats: expected per-token type logits (B, Hkv, {step.q_pos.shape[1]}, 3), "
                             f"got {tuple(step.type_logits.shape)}")
        n_seg, dev = B * Hkv, step.q_pos.device
        state = self._state
        if step.layer not in state:
            state[step.layer] = (torch.full((n_seg,), -1, dtype=torch.long, device=dev),
                                 torch.zeros(n_seg, 3, device=dev))
        last_before, partial = state[step.layer]
        if C == 1 and T == 1 and not step.prefill:  # decode with token types: one new token per segment
            logits = step.type_logits.reshape(n_seg, 3)
            if logits.dtype != torch.float32:
                logits = logits.float()
            out = self._typed_decode(store, step, logits, bias, last_before, partial)
            self._typed_step = (step, out)
            return out
        logits = step.type_logits.reshape(n_seg, T, 3).float()  # (n_seg, T, 3)
        valid, seen = step.q_valid, step.seen
        first = (seen - valid.sum(1)) // C  # (n_seg,) first chunk that was unfinished before the step
        n_done = seen // C - first  # (n_seg,) chunks completed by this step
        K = int(n_done.max()) + 1  # chunks touched, the (possibly empty) unfinished one included
        rel = torch.where(valid, step.q_pos // C - first[:, None], 0)  # (n_seg, T) chunk index in the step
        sums = torch.zeros(n_seg, K, 3, device=dev)
        sums[:, 0] = partial
        sums.scatter_add_(1, rel[..., None].expand(-1, -1, 3), logits * valid[..., None])
        # types of the completed chunks: infer_types with a dummy first row (it forces index 0 Global)
        pad = torch.zeros(n_seg, 1, 3, device=dev)
        types_c = infer_types(torch.cat([pad, sums / C], 1), global_bias=bias)[:, 1:]  # (n_seg, K)
        abs_c = first[:, None] + torch.arange(K, device=dev)  # (n_seg, K) absolute chunk index
        types_c = torch.where(abs_c == 0, GLOBAL, types_c)  # the first chunk (position 0) is Global
        done = torch.arange(K, device=dev)[None, :] < n_done[:, None]  # (n_seg, K)
        newest = torch.where(done & (types_c == GLOBAL), abs_c, -1).max(1).values
        last_global = torch.maximum(last_before, newest)
        partial = sums.gather(1, n_done[:, None, None].expand(-1, 1, 3))[:, 0]  # logit sum of the unfinished chunk
        state[step.layer] = (last_global, partial)

        # (re)type the slots of every chunk that was unfinished before the step; unfinished ones: Global
        occupied = store.valid_rows()
        pos = store.rows(store.pos, fill=-1)  # (n_seg, row_cap)
        cid = pos // C
        k = cid - first[:, None]
        finished = torch.where(k < n_done[:, None], types_c.gather(1, k.clamp(0, K - 1)), GLOBAL).float()
        typ = torch.where(occupied & (k >= 0), finished, self.type_of(store.rows(store.aux["nats_order"])))
        store.set_rows(store.aux["nats_order"], self.order_key(typ, pos))
        out = {"typ": typ, "pos": pos, "cid": cid, "last_global": last_global, "last_global_before": last_before,
               "types_c": types_c, "abs_c": abs_c, "done": done}
        self._typed_step = (step, out)
        return out

    def _typed_decode(self, store: LayerStore, step: Step, logits: torch.Tensor, bias: float,
                      last_before: torch.Tensor, partial: torch.Tensor) -> dict:
        """`_typed` for one decode token per segment with token types: type it (argmax after the
        Global bias, position 0 Global), write its slot's order key, move the last Global position."""
        q_pos, first = self._decode_positions(step.q_pos)
        bias_row, key_base = self._decode_consts(bias, logits.device)
        types = (logits + bias_row if bias else logits).argmax(-1)  # infer_types for one token
        if first is not None:  # position 0 is Global
            types.masked_fill_(first, GLOBAL)
        last_global = torch.where(types == GLOBAL, q_pos, last_before)
        self._state[step.layer] = (last_global, partial)
        # order_key(types, q_pos) from a per-type table
        key = key_base[types] + q_pos
        if first is not None:
            key.masked_fill_(first, 3 * _RANK_STEP)
        store.aux["nats_order"].index_copy_(0, step.new_slots[:, 0], key)
        return {"decode": True, "last_global": last_global}

    def _decode_positions(self, q_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the decode token's position per segment (n_seg,), where it is position 0 or None when
        nowhere), once per step: the engine hands every layer the same `q_pos` tensor."""
        cached = self._decode_pos
        if cached is None or cached[0] is not q_pos:
            pos = q_pos[:, 0]
            first = pos == 0
            cached = (q_pos, pos, first if bool(first.any()) else None)
            self._decode_pos = cached
        return cached[1], cached[2]

    def _decode_consts(self, bias: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(the Global bias as a logit row (3,), the order-key base per type (3,)), made once per run."""
        cached = self._consts
        if cached is None or cached[0] != (bias, device):
            base = torch.zeros(3, dtype=torch.long, device=device)
            base[GLOBAL], base[LOCAL], base[SLIDING] = _RANK_STEP, 0, 2 * _RANK_STEP
            row = torch.zeros(3, device=device)
            row[GLOBAL] = bias
            cached = ((bias, device), row, base)
            self._consts = cached
        return cached[1], cached[2]

    def _select_decode(self, store: LayerStore, step: Step, ty: dict, window: int) -> torch.Tensor | None:
        """`select` after one decode token per segment (token types): the same rule and cap, on the
        occupied slots only (a slice when every segment holds the same count)."""
        capped = self.budget is not None or self.budget_tokens is not None
        if (not capped and self._fast and packed_ready(store, 1, False, True, None)
                and (not store.uniform or store.common_len() < 0)):  # the heads' counts differ
            return self._select_decode_packed(store, step, ty, window)
        n = store.common_len()
        if n >= 0:
            # After the previous step a head held exactly what the rule lets the next query see, so
            # this step's rule can only drop (a) Local tokens, when the new token is Global: their
            # order keys are their positions, the lowest keys of the row, and <= last Global;
            # (b) the Sliding-window token at position seen - W - 1, which leaves the window now.
            # Without either, the cap candidate is the row's lowest order key.
            keys = store.rows(store.aux["nats_order"])[:, :n]
            low, candidate = keys.min(1)
            leaving = self._leaving_key(step, window)  # the order key of (b), once per step (all layers)
            if not bool(((low <= ty["last_global"]) | (keys == leaving).any(1)).any()):
                if not capped:
                    return None
                n_drop, most = self.over_budget(store, step)  # n_drop None: every segment is `most` over
                if most <= 0:
                    return None
                if most == 1:
                    return candidate if n_drop is None else torch.where(n_drop > 0, candidate, -1)
        typ, pos = self.type_of(store.rows(store.aux["nats_order"])), store.rows(store.pos, fill=-1)
        if n >= 0:
            typ, pos = typ[:, :n], pos[:, :n]
        keep = (typ == GLOBAL) | ((typ == LOCAL) & (pos > ty["last_global"][:, None])) \
            | ((typ == SLIDING) & (pos >= (step.seen - window)[:, None]))
        if n < 0:
            keep &= store.valid_rows()
        n_keep = keep.sum(1)
        rule_drops = bool((n_keep != store.lens).any())
        if capped and int((n_keep - self.step_budget(step)).max()) > 0:
            keep = self._cap(keep, typ, pos, self.step_budget(step))
            rule_drops = True
        if not rule_drops:
            return None
        if n >= 0 and n < store.row_cap:  # back to full rows
            keep = torch.nn.functional.pad(keep, (0, store.row_cap - n))
        return keep

    def _leaving_key(self, step: Step, window: int) -> torch.Tensor:
        """(n_seg, 1): the order key of the Sliding-window token that leaves the window at this
        step (position seen - W - 1), once per step (all layers share it)."""
        cached = self._leaving
        if cached is None or cached[0] is not step.seen:
            cached = (step.seen, (2 * _RANK_STEP - window - 1 + step.seen)[:, None])
            self._leaving = cached
        return cached[1]

    def _select_decode_packed(self, store: LayerStore, step: Step, ty: dict, window: int) -> torch.Tensor | None:
        """`_select_decode` without a cap for heads of unequal counts, on the flat store (no row
        gathers): after the previous step every head held exactly what the rule lets the next query
        see, so the only drops are (a) its Local tokens when the new token is Global (their order keys
        are their positions, <= the new last Global) and (b) the Sliding token leaving the window.
        Both are one comparison of the flat order keys against per-segment values, restricted to each
        segment's occupied slots (`packed_invalid`, shared with the step's attention)."""
        invalid = packed_invalid(store)  # (n_seg, capacity)
        keys = store.aux["nats_order"][None, :]
        hit = (keys == self._leaving_key(step, window)) | (keys <= ty["last_global"][:, None])
        drop = hit > invalid  # hit and occupied by the segment (bool: True > False only)
        n_drop = drop.sum(1)
        most = int(n_drop.max())
        if most == 0:
            return None
        if most == 1:  # the usual step: at most the leaving window token per head
            return torch.where(n_drop > 0, drop.to(torch.uint8).argmax(1) - store.offsets, -1)
        return store.valid_rows() & ~drop.gather(1, store.row_index)  # row form

    @staticmethod
    def order_key(typ: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Eviction-order key per slot (lowest goes first): Local, then Global but position 0, then
        Sliding window, then position 0, oldest first within each (rank * 2^40 + position)."""
        rank = torch.where(typ == LOCAL, 0, torch.where(typ == GLOBAL, 1, 2))
        return torch.where(pos == 0, 3, rank) * _RANK_STEP + pos

    @staticmethod
    def type_of(key: torch.Tensor) -> torch.Tensor:
        """The type an `order_key` encodes (rank 0 Local, 1 Global, 2 Sliding window, 3 position 0:
        Global); long, like `key`."""
        table = torch.tensor([LOCAL, GLOBAL, SLIDING, GLOBAL], device=key.device)
        return table[torch.div(key, _RANK_STEP, rounding_mode="floor").clamp_(0, 3)]

    @staticmethod
    def _cap_order(typ: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`order_key`, with the slots not kept sorted last."""
        return NatsPolicy.order_key(typ, pos).masked_fill(~keep, torch.iinfo(torch.long).max)

    @staticmethod
    def _cap(keep: torch.Tensor, typ: torch.Tensor, pos: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        """Evict beyond `budget (n_seg,)`: Local, then Global but position 0, then SW, oldest first."""
        n_drop = keep.sum(1) - budget  # (n_seg,)
        if int(n_drop.max()) <= 0:
            return keep
        # the order keys are unique per row (they hold the position), so the tie rule never applies
        return drop_lowest(NatsPolicy._cap_order(typ, pos, keep), pos, n_drop, keep)
