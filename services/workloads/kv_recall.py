"""`kv_recall`: `num_pairs` "k=V." pairs spread over the filler, `num_queries` of them asked
at once; the model answers "k=V k=V ..." in the asked order. Format:
`nats_model.data.tasks.kv_recall`. Score: accuracy per query (the fraction of asked keys whose
generated value is right, read from the first generated line with `tasks.parse_pairs`)."""

from __future__ import annotations

from .base import Instance, Param
from .scoring import first_line, per_query_accuracy
from .synthetic import SyntheticWorkload, common_params


class KvRecall(SyntheticWorkload):
    name = "kv_recall"
    task = "kv_recall"
    description = "many key=value pairs in filler, several queried; accuracy per query"
    metric = "accuracy per query"

    @property
    def params(self) -> tuple[Param, ...]:  # type: ignore[override]
        return common_params(512) + (
            Param("num_pairs", "int", 8, "key=value pairs in the context (keys a-z)", minimum=1, maximum=26),
            Param("num_queries", "int", 3, "keys asked (<= num_pairs)", minimum=1, maximum=26),
            Param("digits", "int", 3, "digits of each value", minimum=1, maximum=18),
        )

    def check(self, params: dict) -> None:
        if params["num_queries"] > params["num_pairs"]:
            raise ValueError(
                f"workload 'kv_recall': parameter 'num_queries' must be <= num_pairs={params['num_pairs']}, "
                f"got {params['num_queries']}"
            )
        super().check(params)

    def extra_meta(self, prompt: str, answer: str, params: dict) -> dict:
        from nats_model.data.tasks import parse_pairs

        pairs = parse_pairs(answer)
        return {"queries": list(pairs), "values": list(pairs.values())}

    def score(self, prediction: str, instance: Instance) -> float:
        from nats_model.data.tasks import parse_pairs

        got = parse_pairs(first_line(prediction))
        predicted = [got.get(k) for k in instance.meta["queries"]]
        return per_query_accuracy(predicted, instance.meta["values"])
