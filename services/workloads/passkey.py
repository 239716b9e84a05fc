"""`passkey`: a pass key of `digits` digits hidden at `depth` in long filler, asked at the end
(Mohtashami & Jaggi, 2023). Format: `nats_model.data.tasks.passkey`. Score: exact match of the
first generated line (a following non-alphanumeric character is allowed)."""

from __future__ import annotations

from .base import Param
from .synthetic import SyntheticWorkload, common_params


class Passkey(SyntheticWorkload):
    name = "passkey"
    task = "passkey"
    description = "a pass key hidden at a depth in long filler; exact match"
    metric = "exact match"

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        return common_params(1024) + (
            Param("digits", "int", 5, "digits of the pass key", minimum=1, maximum=18),
        )
