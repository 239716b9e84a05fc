"""NAtS training attention: the dense reference autograd Function (`reference`, the oracle), the
block-wise CPU Function (`blockwise`, same gradient in O(N x block) memory), the input contract both
share with the Triton kernels (`contract`) and the dispatch between them and the kernels
(`dispatch.nats_attention`). The model calls `nats_model.attention.nats_attention` (read at call time,
so a test or benchmark may swap it on this package)."""

from nats_model.attention.blockwise import nats_attention_blockwise
from nats_model.attention.dispatch import nats_attention
from nats_model.attention.reference import nats_attention_reference

__all__ = ["nats_attention", "nats_attention_blockwise", "nats_attention_reference"]
