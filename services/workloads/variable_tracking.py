"""`variable_tracking`: chains of assignments "a=V. b=a. c=b. ..." (`num_hops` copies per
chain, `num_chains` chains, the others are distractors) and the value of the asked chain's last
variable asked at the end (RULER's variable tracking, one answer). Format:
`nats_model.data.tasks.variable_tracking`. Score: exact match of the value."""

from __future__ import annotations

from .base import Param
from .synthetic import SyntheticWorkload, common_params


class VariableTracking(SyntheticWorkload):
    name = "variable_tracking"
    task = "variable_tracking"
    description = "chained assignments (a=5; b=a; ...) queried at the end (RULER); exact match"
    metric = "exact match"

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        return common_params(512) + (
            Param("num_hops", "int", 3, "assignments copying the value along a chain", minimum=1, maximum=25),
            Param("num_chains", "int", 2, "chains (1 asked, the rest distractors)", minimum=1, maximum=13),
            Param("digits", "int", 3, "digits of the values", minimum=1, maximum=18),
        )
