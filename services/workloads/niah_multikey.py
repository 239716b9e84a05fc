"""`niah_multikey`: several key -> value needles ("The number for K is V."), one of them asked
(RULER's multi-key needle in a haystack). The asked needle sits at `depth`, the others at
random depths. Format: `nats_model.data.tasks.niah_multikey` (single-character keys, one token
each at byte level). Score: exact match of the asked value."""

from __future__ import annotations

from .base import Param
from .synthetic import SyntheticWorkload, common_params


class NiahMultikey(SyntheticWorkload):
    name = "niah_multikey"
    task = "niah_multikey"
    description = "several key->value needles, one asked (RULER style); exact match"
    metric = "exact match"

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        return common_params(512) + (
            Param("num_keys", "int", 4, "number of needles (keys are single letters A-Z)", minimum=1, maximum=26),
            Param("digits", "int", 5, "digits of each value", minimum=1, maximum=18),
        )
