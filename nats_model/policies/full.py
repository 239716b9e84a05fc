"""Full cache: the reference every eviction policy is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nats_model.policies.base import Policy


@dataclass
class FullPolicy(Policy):
    """Keeps every token of every head (standard autoregressive decoding with a KV cache).

    No budget; `select` keeps all, so the cache holds exactly the real tokens seen.
    """

    name: ClassVar[str] = "full"
    needs_budget: ClassVar[bool] = False
    # keeps everything under every protocol
    protocols: ClassVar[tuple[str, ...]] = ("streaming", "prompt", "context")
    default_protocol: ClassVar[str] = "streaming"
    decode_evicts: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.budget is not None or self.budget_tokens is not None:
            raise ValueError("full: takes no budget (budget and budget_tokens must be unset)")
