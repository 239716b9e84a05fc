"""`nats_prefill_triton`: forward-only NAtS attention for inference prefill, with block skipping.

The same FlashAttention-2 forward as training (`nats_attn_fwd`), without the unmasked LSE, plus a
(query block, key block) visit table decided in torch from block-level bounds
(`bounds.block_skip_table`): a key block is skipped for a query block when the largest
vis_end (the last query that sees a key: N-1 for Global, E(n) for Local, n+W for SW) of its keys
lies before the query block's first row. With mostly SW keys a query block then visits only the
key blocks of its window plus those holding Global or still-open Local keys. The kernel also
reports how many key blocks each query block visited (`return_visited=True`).
"""

from __future__ import annotations

import math

import torch

from nats_model.kernels.bounds import block_skip_table, key_bounds


def nats_prefill_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, types: torch.Tensor, *, window: int,
    chunk_size: int | None = None, scale: float | None = None, block: int | None = None,
    return_visited: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention output (B, Hq, N, hd) under the NAtS visibility rule, skipping invisible key blocks.

    q (B,Hq,N,hd), k/v (B,Hkv,N,hd); types int (B,Hkv,N), or (B,Hkv,ceil(N/C)) with
    `chunk_size=C` (0 Global, 1 Local, 2 SW). Inference rule: a Local key no Global key has
    followed yet stays visible to the end. With `return_visited` also returns the number of key
    blocks each query block computed, int32 (B, Hq, ceil(N/block)). `block` (query = key block)
    defaults by head dim and dtype, halved on OutOfResources.
    """
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"expected q (B,Hq,N,hd), k and v (B,Hkv,N,hd); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    bsz, hq, n, hd = q.shape
    hkv = k.shape[1]
    if hq % hkv or not 16 <= hd <= 256:
        raise ValueError(f"need Hq % Hkv == 0 and head dim in 16..256; got Hq={hq}, Hkv={hkv}, hd={hd}")
    if types.dtype.is_floating_point or types.shape[:2] != (bsz, hkv) or types.ndim != 3:
        raise ValueError(f"types must be an integer tensor (B, Hkv, N or ceil(N/C)) = ({bsz}, {hkv}, ...), "
                         f"got {types.dtype} {tuple(types.shape)}")
    if block not in (None, 16, 32, 64, 128):
        raise ValueError(f"block must be one of 16, 32, 64, 128, got {block}")
    from nats_model.kernels.nats_attn_fwd import default_block, nats_forward, with_block_fallback

    kb = key_bounds(types, n, window, chunk_size)
    vis_end = kb.vis_end(n)  # (B, Hkv, N) long
    sc = 1.0 / math.sqrt(hd) if scale is None else float(scale)
    q_c, k_c, v_c = q.contiguous(), k.contiguous(), v.contiguous()

    def launch(bl: int):
        table = block_skip_table(vis_end, n, bl, bl)  # (B, Hkv, Mb, Nb)
        table_q = table.repeat_interleave(hq // hkv, dim=1).to(torch.int8).contiguous()  # (B, Hq, Mb, Nb)
        return nats_forward(q_c, k_c, v_c, kb.types, kb.loc_end, kb.sw_end, sc, full_lse=False, skip=table_q,
                            block_m=bl, block_n=bl)

    out, _, _, visited = with_block_fallback(launch, block or default_block(q, hd))
    return (out, visited) if return_visited else out
