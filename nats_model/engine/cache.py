"""Memory-true KV cache: per layer, per sequence, per KV head, exactly the tokens a policy keeps.

Layout of one layer (`LayerStore`): a flat buffer `k, v (capacity, hd)` cut into segments, one per
(sequence b, KV head h), segment id `s = b * Hkv + h`. Segment `s` owns `caps[s]` slots starting at
`offsets[s]`; its first `lens[s]` slots hold kept tokens (in no particular order: the original
position of every slot is in `pos`). Segments with equal capacity sit next to each other as a
*group*, so a group is one strided `(n, cap, hd)` view and attention runs batched per group (one
group when every head keeps the same number of tokens, the common case).

Memory bound: a relayout gives each segment `len + max(1, floor(0.04 len))` slots (or one common
capacity when that costs no more than 5% + 1 slot per segment), and after an eviction the layer
is shrunk again whenever capacity exceeds `1.05 * kept + n_segments` slots. So between steps
`kv_bytes_physical <= 1.05 * kept_bytes + n_segments * 2 * hd * itemsize` per layer.
`kv_bytes_physical` counts the K and V storages only (what `untyped_storage().nbytes()` reports);
positions and policy scores are metadata, reported separately by `meta_bytes`.

Eviction (`compact`) is swap-remove: kept slots beyond the new length move into the holes, so an
eviction costs O(evicted), not O(kept). Per-slot policy state lives in `aux` fields that move
with the tokens.
"""

from __future__ import annotations

import torch

SLACK_FRACTION = 0.04
BOUND_FRACTION = 1.05


def _capacities(lens: list[int]) -> tuple[list[int], bool]:
    """Slots per segment for target lengths; second value True when one common capacity is used."""
    caps = [n + max(1, int(n * SLACK_FRACTION)) for n in lens]
    common = max(caps, default=0)
    if common * len(lens) <= BOUND_FRACTION * sum(lens) + len(lens):
        return [common] * len(lens), True
    return caps, False


class LayerStore:
    """The kept tokens of one attention layer for every (sequence, KV head) segment.

    Holds `k, v (capacity, hd)`, original positions `pos (capacity,)` and `aux` fields (policy
    state, one value per slot; float32 unless `aux_dtypes` names another dtype for a field).
    Policies read and write it in *row form*: tensors of shape `(n_seg, row_cap)` (a free view when
    all segments share one capacity) via `rows`/`set_rows`, with `valid_rows()` marking the
    occupied slots.
    """

    def __init__(self, n_seg: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 aux_names: tuple[str, ...] = (), aux_dtypes: dict[str, torch.dtype] | None = None):
        self.n_seg, self.head_dim, self.dtype, self.device = n_seg, head_dim, dtype, device
        self.k = torch.empty(0, head_dim, dtype=dtype, device=device)
        self.v = torch.empty(0, head_dim, dtype=dtype, device=device)
        self.pos = torch.empty(0, dtype=torch.long, device=device)
        self.aux: dict[str, torch.Tensor] = {
            n: torch.empty(0, dtype=(aux_dtypes or {}).get(n, torch.float32), device=device) for n in aux_names}
        self._set_layout([0] * n_seg)
        self.lens = torch.zeros(n_seg, dtype=torch.long, device=device)
        self.relayout_old_bytes = 0  # K/V bytes freed by the last relayouts (engine reads and resets)

    # ---------------------------------------------------------------- layout
    def _set_layout(self, caps: list[int]) -> None:
        """Order segments by capacity into groups; compute offsets and the row index."""
        order = sorted(range(self.n_seg), key=lambda s: (caps[s], s))
        offsets = [0] * self.n_seg
        self.groups: list[tuple[torch.Tensor, int, int]] = []  # (segment ids, start slot, cap)
        start, i = 0, 0
        while i < len(order):
            j = i
            while j < len(order) and caps[order[j]] == caps[order[i]]:
                offsets[order[j]] = start + (j - i) * caps[order[i]]
                j += 1
            seg_ids = torch.tensor(order[i:j], dtype=torch.long, device=self.device)
            self.groups.append((seg_ids, start, caps[order[i]]))
            start += (j - i) * caps[order[i]]
            i = j
        self.caps_list = caps
        self._by_common: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # see _common_consts
        self._decode_new: tuple | None = None  # see append / evict_one
        self.capacity = start
        self.row_cap = max(caps, default=0)
        self.uniform = len(set(caps)) <= 1 and order == list(range(self.n_seg))
        self.caps = torch.tensor(caps, dtype=torch.long, device=self.device)
        self.offsets = torch.tensor(offsets, dtype=torch.long, device=self.device)
        j = torch.arange(self.row_cap, device=self.device)
        self.row_exists = j[None, :] < self.caps[:, None]  # (n_seg, row_cap)
        self.row_index = torch.where(self.row_exists, self.offsets[:, None] + j[None, :], 0)  # flat slot

    def relayout(self, target_lens: list[int]) -> None:
        """Reallocate with capacities for `target_lens` (>= current lens); copies the kept slots."""
        caps, _ = _capacities(target_lens)
        src = self.row_index[self.valid_rows()]  # flat slots in row-major (segment, slot) order
        old = (self.k, self.v, self.pos, dict(self.aux))
        # while copying, the old and the new buffers are both alive: report the old ones' bytes
        self.relayout_old_bytes = max(self.relayout_old_bytes, self.kv_bytes_physical())
        self._set_layout(caps)
        self.lens = self._lens  # refresh the derived caches for the new layout
        dst = self.row_index[self.valid_rows()]  # same (segment, slot) order in the new layout
        total = self.capacity
        # zeros, not empty: a masked slot still enters probs @ V, and 0 * NaN garbage is NaN
        self.k = torch.zeros(total, self.head_dim, dtype=self.dtype, device=self.device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.zeros(total, dtype=torch.long, device=self.device)
        self.k[dst], self.v[dst], self.pos[dst] = old[0][src], old[1][src], old[2][src]
        for name, a in old[3].items():
            self.aux[name] = torch.zeros(total, dtype=a.dtype, device=self.device)
            self.aux[name][dst] = a[src]

    # -------------------------------------------------------------- row form
    @property
    def lens(self) -> torch.Tensor:
        """(n_seg,) occupied slots per segment. Replaced, never modified in place."""
        return self._lens

    @lens.setter
    def lens(self, value: torch.Tensor) -> None:
        self._decode_new = None
        self._set_lens(value)

    def _set_lens(self, value: torch.Tensor, kept_total: int | None = None, free_min: int | None = None,
                  common: int | None = None) -> None:
        """Replace `lens`; `kept_total` / `free_min` (a lower bound on caps - lens) / `common` (the
        length every segment has) when the caller knows them."""
        self._lens = value
        self._valid = None  # valid_rows cache
        self._common = common  # common_len cache (None: not known yet)
        self.kept_total = int(value.sum()) if kept_total is None else kept_total
        if free_min is None:
            free_min = int((self.caps - value).min()) if value.numel() else 0
        self.free_min = free_min

    def _common_consts(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(lens, offsets + c) for every segment holding c tokens, cached per layout: decode steps move
        between the same two lengths (append, then evict one), so this saves two tensor ops a step."""
        hit = self._by_common.get(c)
        if hit is None:
            if len(self._by_common) >= 8:
                self._by_common.clear()
            hit = (torch.full((self.n_seg,), c, dtype=torch.long, device=self.device), self.offsets + c)
            self._by_common[c] = hit
        return hit

    def common_len(self) -> int:
        """The length all segments share, or -1 when they differ (cached until `lens` changes)."""
        if self._common is None:
            lo, hi = (int(x) for x in self._lens.aminmax()) if self.n_seg else (0, 0)
            self._common = lo if lo == hi else -1
        return self._common

    def valid_rows(self) -> torch.Tensor:
        """(n_seg, row_cap) bool: slot holds a kept token (cached until `lens` changes)."""
        if self._valid is None:
            self._valid = torch.arange(self.row_cap, device=self.device)[None, :] < self._lens[:, None]
        return self._valid

    def rows(self, flat: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """A per-slot tensor (capacity, ...) in row form (n_seg, row_cap, ...); a view when uniform."""
        if self.uniform:
            return flat.view(self.n_seg, self.row_cap, *flat.shape[1:])
        out = flat[self.row_index]
        mask = self.row_exists.view(*self.row_exists.shape, *([1] * (flat.dim() - 1)))
        return torch.where(mask, out, torch.as_tensor(fill, dtype=flat.dtype, device=flat.device))

    def set_rows(self, flat: torch.Tensor, rows: torch.Tensor) -> None:
        """Write row-form values back into the per-slot tensor `flat` (in place)."""
        if self.uniform:
            flat.view(self.n_seg, self.row_cap, *flat.shape[1:]).copy_(rows)
        else:
            flat[self.row_index[self.row_exists]] = rows[self.row_exists]

    def add_rows(self, flat: torch.Tensor, rows: torch.Tensor) -> None:
        """flat += rows (row form), in place. `rows` may be narrower than `row_cap` (n_seg, w, ...):
        the slots past column w get nothing."""
        w = rows.shape[1]
        if self.uniform:
            view = flat.view(self.n_seg, self.row_cap, *flat.shape[1:])
            (view if w == self.row_cap else view[:, :w]).add_(rows)
        else:
            exists = self.row_exists if w == self.row_cap else self.row_exists[:, :w]
            flat.index_add_(0, self.row_index[:, :w][exists], rows[exists])

    # ------------------------------------------------------------ mutations
    def append(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor,
               all_valid: bool | None = None) -> torch.Tensor:
        """Store new tokens. k, v (n_seg, T, hd); pos, valid (n_seg, T). Invalid (padding) tokens
        are not stored. Returns the flat slot of every new token (n_seg, T), -1 where not stored."""
        n_seg, T = pos.shape
        all_valid = bool(valid.all()) if all_valid is None else all_valid
        if T == 1 and all_valid:  # decode: one token per segment
            if self.free_min < 1:
                self.lens = self._lens  # free_min may be a stale lower bound: recompute it
                if self.free_min < 1:
                    self.relayout((self._lens + 1).tolist())
            common = self._common
            if common is not None and common >= 0:  # equal lengths: cached tensors
                new_lens, dst = self._common_consts(common + 1)[0], self._common_consts(common)[1]
                common += 1
            else:
                new_lens, dst, common = self._lens + 1, self.offsets + self._lens, None  # dst (n_seg,)
            k0, v0, p0 = k[:, 0], v[:, 0], pos[:, 0]
            self.k.index_copy_(0, dst, k0)
            self.v.index_copy_(0, dst, v0)
            self.pos.index_copy_(0, dst, p0)
            for a in self.aux.values():
                a.index_fill_(0, dst, 0)
            self._set_lens(new_lens, self.kept_total + n_seg, self.free_min - 1, common)
            # what slot dst now holds, for an eviction in the same step (evict_one copies from these);
            # with the lens it made: while they are current, dst is every segment's last slot
            self._decode_new = (dst, k0, v0, p0, self._lens)
            return dst[:, None]
        self._decode_new = None
        n_new = valid.sum(1)
        rank = valid.long().cumsum(1) - 1
        new_lens = self._lens + n_new
        if bool((new_lens > self.caps).any()):
            self.relayout(new_lens.tolist())
        slot = self.offsets[:, None] + self._lens[:, None] + rank  # (n_seg, T)
        dst = slot[valid]
        self.k[dst], self.v[dst], self.pos[dst] = k[valid], v[valid], pos[valid]
        for a in self.aux.values():
            a[dst] = 0
        self.lens = new_lens
        return torch.where(valid, slot, -1)

    def compact(self, keep: torch.Tensor) -> int:
        """Drop every occupied slot where `keep (n_seg, row_cap)` is False; returns how many."""
        valid = self.valid_rows()
        drop = valid & ~keep
        per_row = drop.sum(1)  # (n_seg,)
        most = int(per_row.max()) if per_row.numel() else 0
        if most == 0:
            return 0
        if most == 1:  # typical decode step: swap the segment's last token into the hole
            return self.evict_one(torch.where(per_row > 0, drop.byte().argmax(1), -1))
        keep = valid & ~drop
        new_lens = keep.sum(1)
        n_drop = self.kept_total - int(new_lens.sum())
        j = torch.arange(self.row_cap, device=self.device)[None, :]
        holes = self.row_index[valid & ~keep & (j < new_lens[:, None])]  # slots to refill
        movers = self.row_index[keep & (j >= new_lens[:, None])]  # kept slots past the new end
        if holes.numel():  # both lists are in (segment, slot) order with equal counts per segment
            for t in (self.k, self.v, self.pos, *self.aux.values()):
                t[holes] = t[movers]
        self.lens = new_lens
        self._maybe_shrink()
        return n_drop

    def evict_one(self, row_slot: torch.Tensor) -> int:
        """Drop at most one token per segment: `row_slot (n_seg,)` is its slot in row form, -1 for
        none (the decode-step fast path of `compact`). Returns how many were dropped."""
        if int(row_slot.min()) >= 0:  # one op for the usual case: every segment drops one
            drop, n_drop = None, self.n_seg
        else:
            drop = row_slot >= 0
            n_drop = int(drop.sum())
            if n_drop == 0:
                return 0
        common = self._common if self._common is not None and self._common > 0 else None
        # (n_seg,) flat slot of each segment's last token (an empty segment, e.g. a sequence still in
        # its left padding, points at its first slot and copies nothing: it has no drop)
        new, self._decode_new = self._decode_new, None
        if common is not None:
            last = self._common_consts(common - 1)[1]
        elif new is not None and new[4] is self._lens:
            last = new[0]  # this step's append wrote every segment's last slot (no other change since)
        else:
            last = self.offsets + (self._lens - 1).clamp(min=0)
        if n_drop == self.n_seg:
            hole = self.offsets + row_slot
        else:
            hole = torch.where(drop, self.offsets + row_slot, last)  # rows without a drop copy onto themselves
        if new is not None and new[0] is last:
            # every segment's last slot holds the token this step's append wrote there (same length
            # tensor object => no other change since): copy K, V, position from the append's inputs;
            # aux from the store (the policy may have set the new token's fields)
            for t, src in zip((self.k, self.v, self.pos), new[1:4], strict=True):
                t.index_copy_(0, hole, src)
            for t in self.aux.values():
                t.index_copy_(0, hole, t.index_select(0, last))
        else:
            for t in (self.k, self.v, self.pos, *self.aux.values()):
                t.index_copy_(0, hole, t.index_select(0, last))
        # evicting only frees slots, so the old free_min stays a valid lower bound; one token from
        # every segment keeps equal lengths equal
        if n_drop == self.n_seg:
            self._set_lens(self._lens - 1 if common is None else self._common_consts(common - 1)[0],
                           self.kept_total - n_drop, self.free_min, None if common is None else common - 1)
        else:
            self._set_lens(self._lens - drop.long(), self.kept_total - n_drop, self.free_min)
        self._maybe_shrink()
        return n_drop

    def _maybe_shrink(self) -> None:
        if self.capacity > BOUND_FRACTION * self.kept_total + self.n_seg:
            self.relayout(self._lens.tolist())

    # ------------------------------------------------------------ accounting
    def kv_bytes_physical(self) -> int:
        """Bytes of the K and V storages (== their untyped_storage().nbytes())."""
        return 2 * self.capacity * self.head_dim * self.k.element_size()

    def meta_bytes(self) -> int:
        return self.pos.untyped_storage().nbytes() + sum(a.untyped_storage().nbytes() for a in self.aux.values())


class KVCache:
    """All layers' `LayerStore`s plus the tokens seen per sequence.

    Created lazily per layer from the first keys it sees (so the engine needs no model
    introspection). `seen (B,)` counts the real (non-padding) tokens of each sequence so far;
    `kv_bytes_full` is what a cache keeping all of them would hold.
    """

    def __init__(self, batch: int, aux_names: tuple[str, ...] = (),
                 aux_dtypes: dict[str, torch.dtype] | None = None):
        self.batch = batch
        self.aux_names, self.aux_dtypes = aux_names, dict(aux_dtypes or {})
        self.layers: dict[int, LayerStore] = {}
        self.seen = torch.zeros(batch, dtype=torch.long)
        self.n_kv_heads = 0
        self.head_dim = 0
        self.itemsize = 0

    def layer(self, idx: int, k: torch.Tensor) -> LayerStore:
        """The store of layer `idx`, created from keys `k (B, Hkv, T, hd)` on first use."""
        store = self.layers.get(idx)
        if store is None:
            B, Hkv, _, hd = k.shape
            if B != self.batch:
                raise ValueError(f"keys have batch {B}, the cache was made for batch {self.batch}")
            self.n_kv_heads, self.head_dim, self.itemsize = Hkv, hd, k.element_size()
            self.seen = self.seen.to(k.device)
            store = LayerStore(B * Hkv, hd, k.dtype, k.device, self.aux_names, self.aux_dtypes)
            self.layers[idx] = store
        return store

    def seen_per_segment(self, n_kv_heads: int | None = None) -> torch.Tensor:
        """(B * Hkv,) tokens seen by the sequence of each segment."""
        return self.seen.repeat_interleave(max(n_kv_heads or self.n_kv_heads, 1))

    def kv_bytes_physical(self) -> int:
        return sum(s.kv_bytes_physical() for s in self.layers.values())

    def meta_bytes(self) -> int:
        return sum(s.meta_bytes() for s in self.layers.values())

    def kept_tokens(self) -> int:
        return sum(int(s.lens.sum()) for s in self.layers.values())

    def kv_bytes_kept(self) -> int:
        return self.kept_tokens() * 2 * self.head_dim * self.itemsize

    def kv_bytes_full(self) -> int:
        per_token = len(self.layers) * self.n_kv_heads * 2 * self.head_dim * self.itemsize
        return int(self.seen.sum()) * per_token

    def kept_fraction(self) -> float:
        """kept / seen, averaged over layers, KV heads and sequences (sequences with no tokens skipped)."""
        if not self.layers:
            return 1.0
        seen = self.seen_per_segment().float()
        has = seen > 0
        if not bool(has.any()):
            return 1.0
        fr = [(s.lens.float()[has] / seen[has]).mean() for s in self.layers.values()]
        return float(torch.stack(fr).mean())

    def kept_per_layer_head(self) -> torch.Tensor:
        """(n_layers, B, Hkv) kept token counts."""
        return torch.stack([self.layers[i].lens.view(self.batch, -1) for i in sorted(self.layers)])
