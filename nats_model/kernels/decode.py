"""`varlen_decode_attention`: one-token decode attention over the packed per-head `LayerStore`.

The engine's store (`nats_model.engine.cache.LayerStore`) keeps, per segment s = (sequence, KV head), a
run of `caps[s]` slots at `offsets[s]` in flat `k, v (capacity, hd)` buffers; the occupied slots are
always the first `lens[s]` of the run (appends write at `offsets + lens`, evictions swap the last
token into the hole, relayouts copy rows in order), and `pos` holds each slot's original position.
So the kept keys of a head are a variable-length batch, as in the paper's code (which flattens each
head's kept keys): this kernel reads each segment's OWN `lens[s]` slots in place, no padding to the
longest head, no dense mask, no copy.

Kernel (flash-decoding): grid (segment, split); each program loads the segment's g query heads
(GQA: one KV head serves g query heads) and runs an online softmax over its share of key blocks;
a torch epilogue merges the splits by their log-sum-exp. Key slot j of segment s is visible when
j < lens[s] and pos[j] <= q_pos[s] (and pos[j] > q_pos[s] - window with a sliding window): exactly
`nats_model.engine.kv_engine.attend_store`'s rule for a decode query (T == 1, no padding, no policy mask).
Returns out (n_seg, g, hd) and the natural-log LSE (n_seg, g) in float32, so a caller can rebuild
any key's probability as exp(scale * q.k - lse) without a dense probability tensor (the engine does
not use it yet: observing policies stay on the torch path).

Dispatch (`nats_model.engine.kv_engine.KVEngine.attend`): CUDA tensors only, when triton imports, for a
plain decode step (T == 1, no padding, no policy visibility mask, policy observe == "none") whose
store is not on the mask-free uniform path. Never on the CPU: CPU outputs stay bit-identical.
Switch it off with the environment variable `NATSBENCH_TRITON_DECODE=0` (read per engine) or
`KVEngine(..., triton_decode=False)`.

Status: correctness is tested under Triton's interpreter on the CPU (tests/kernels/test_decode_triton.py);
the CUDA speed is UNMEASURED (no GPU was available when this was written); `scripts/gpu_check.py`
times it against the torch path at a 16k store with 10% kept.
"""

from __future__ import annotations

import math
import os

import torch

ENV_SWITCH = "NATSBENCH_TRITON_DECODE"
_kernel_cache: dict = {}


def triton_decode_enabled() -> bool:
    """False when NATSBENCH_TRITON_DECODE is 0 / false / off / no (any case)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def triton_available() -> bool:
    """True when triton imports (cached)."""
    if "ok" not in _kernel_cache:
        try:
            import triton  # noqa: F401
            _kernel_cache["ok"] = True
        except Exception:  # noqa: BLE001 - any import failure means: no kernel
            _kernel_cache["ok"] = False
    return _kernel_cache["ok"]


def use_decode_kernel(device: torch.device) -> bool:
    """The engine's gate: a CUDA device, triton importable and the switch not off."""
    return device.type == "cuda" and triton_decode_enabled() and triton_available()


def _kernel():
    """Build the Triton kernel on first use (so importing this module never imports triton)."""
    if "kernel" in _kernel_cache:
        return _kernel_cache["kernel"]
    import triton
    import triton.language as tl

    @triton.jit
    def _decode_fwd(Q, K, V, POS, OFF, LENS, QPOS, ACC, M, L, scale, window, blocks_per_split,
                    stride_qs, stride_qg, stride_as, stride_asp, stride_ag, stride_ms, stride_msp,
                    G: tl.constexpr, HD: tl.constexpr, G_PAD: tl.constexpr, D_PAD: tl.constexpr,
                    BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, IEEE: tl.constexpr):
        seg = tl.program_id(0)
        split = tl.program_id(1)
        offs_g = tl.arange(0, G_PAD)
        offs_d = tl.arange(0, D_PAD)
        g_ok = offs_g < G
        d_ok = offs_d < HD
        q = tl.load(Q + seg * stride_qs + offs_g[:, None] * stride_qg + offs_d[None, :],
                    mask=g_ok[:, None] & d_ok[None, :], other=0.0)
        base = tl.load(OFF + seg)
        n = tl.load(LENS + seg)
        qpos = tl.load(QPOS + seg)
        m_i = tl.full([G_PAD], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([G_PAD], dtype=tl.float32)
        acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)
        start = split * blocks_per_split * BLOCK_N
        stop = tl.minimum(start + blocks_per_split * BLOCK_N, n)
        for lo in range(start, stop, BLOCK_N):
            offs_n = lo + tl.arange(0, BLOCK_N)
            n_ok = offs_n < stop
            slot = base + offs_n
            p_key = tl.load(POS + slot, mask=n_ok, other=0)
            vis = n_ok & (p_key <= qpos)
            if HAS_WINDOW:
                vis = vis & (p_key > qpos - window)
            kt = tl.load(K + slot[None, :] * HD + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            if IEEE:
                s = tl.dot(q, kt, input_precision="ieee")
            else:
                s = tl.dot(q, kt)
            s = s * scale
            s = tl.where(vis[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vv = tl.load(V + slot[:, None] * HD + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv)
            m_i = m_new
        tl.store(ACC + seg * stride_as + split * stride_asp + offs_g[:, None] * stride_ag + offs_d[None, :], acc,
                 mask=g_ok[:, None] & d_ok[None, :])
        tl.store(M + seg * stride_ms + split * stride_msp + offs_g, m_i, mask=g_ok)
        tl.store(L + seg * stride_ms + split * stride_msp + offs_g, l_i, mask=g_ok)

    _kernel_cache["kernel"] = _decode_fwd
    return _decode_fwd


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, (x - 1).bit_length()))


def varlen_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                            offsets: torch.Tensor, lens: torch.Tensor, q_pos: torch.Tensor, scale: float,
                            sliding_window: int | None = None, block_n: int = 64,
                            num_splits: int | None = None, max_len: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """q (n_seg, g, hd) over each segment's own kept slots -> out (n_seg, g, hd) in q's dtype and
    lse (n_seg, g) float32 (natural log, of scale * q.k over the visible keys).

    k, v (capacity, hd) and pos (capacity,) are the store's flat buffers; segment s reads slots
    offsets[s] .. offsets[s] + lens[s] - 1 (visible when pos <= q_pos[s], and > q_pos[s] -
    sliding_window when given). `max_len`: max(lens) when the caller knows it (saves a device
    sync). `num_splits`: key splits per segment (default: enough programs to fill a GPU)."""
    if q.ndim != 3 or k.ndim != 2 or v.shape != k.shape or q.shape[2] != k.shape[1]:
        raise ValueError(f"expected q (n_seg, g, hd), k and v (capacity, hd); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    n_seg, g, hd = q.shape
    if offsets.shape != (n_seg,) or lens.shape != (n_seg,) or q_pos.shape != (n_seg,) or pos.shape != (k.shape[0],):
        raise ValueError(f"offsets, lens, q_pos must be ({n_seg},) and pos ({k.shape[0]},); got "
                         f"{tuple(offsets.shape)}, {tuple(lens.shape)}, {tuple(q_pos.shape)}, {tuple(pos.shape)}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be None or >= 1, got {sliding_window}")
    if block_n not in (16, 32, 64, 128):
        raise ValueError(f"block_n must be one of 16, 32, 64, 128, got {block_n}")
    kernel = _kernel()
    k, v = k.contiguous(), v.contiguous()
    q = q.contiguous()
    if max_len is None:
        max_len = int(lens.max()) if n_seg else 0
    n_blocks = max(1, math.ceil(max_len / block_n))
    if num_splits is None:  # aim at >= ~256 programs, each with >= 4 key blocks
        num_splits = max(1, min(math.ceil(256 / max(n_seg, 1)), n_blocks // 4))
    num_splits = max(1, min(num_splits, n_blocks))
    blocks_per_split = math.ceil(n_blocks / num_splits)
    num_splits = math.ceil(n_blocks / blocks_per_split)
    dev = q.device
    acc = torch.empty(n_seg, num_splits, g, hd, dtype=torch.float32, device=dev)
    m = torch.empty(n_seg, num_splits, g, dtype=torch.float32, device=dev)
    l_ = torch.empty_like(m)
    if n_seg:
        kernel[(n_seg, num_splits)](
            q, k, v, pos.contiguous(), offsets.contiguous(), lens.contiguous(), q_pos.contiguous(), acc, m, l_,
            float(scale), int(sliding_window or 0), blocks_per_split,
            q.stride(0), q.stride(1), acc.stride(0), acc.stride(1), acc.stride(2), m.stride(0), m.stride(1),
            G=g, HD=hd, G_PAD=_pow2(g), D_PAD=_pow2(hd), BLOCK_N=block_n, HAS_WINDOW=sliding_window is not None,
            IEEE=q.dtype == torch.float32)
    if num_splits == 1:
        l0 = l_[:, 0]
        out = acc[:, 0] / l0.clamp_min(1e-30)[..., None]
        lse = m[:, 0] + torch.log(l0)
    else:  # merge the splits by their running max: empty splits have m = -1e30, weight 0
        m_max = m.amax(1, keepdim=True)  # (n_seg, 1, g)
        w = torch.exp(m - m_max)
        l_tot = (l_ * w).sum(1)  # (n_seg, g)
        out = (acc * w[..., None]).sum(1) / l_tot.clamp_min(1e-30)[..., None]
        lse = m_max[:, 0] + torch.log(l_tot)
    return out.to(q.dtype), lse
