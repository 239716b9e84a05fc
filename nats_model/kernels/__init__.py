"""Triton kernels: NAtS attention (training forward/backward, an inference prefill) and a
variable-length decode attention over the packed per-head KV store (`kernels.decode`, used by the
engine on CUDA only).

Importing this package does not import triton: the kernels are compiled on first call. They
run on CUDA, or on the CPU only under TRITON_INTERPRET=1 set before triton is first imported.
"""

from nats_model.kernels.nats_attn import nats_attention_triton
from nats_model.kernels.prefill import nats_prefill_triton

__all__ = ["nats_attention_triton", "nats_prefill_triton"]
