"""Shared machinery of the synthetic workloads: they wrap the task formats of
`nats_model.data.tasks` (the same functions the models are trained on) and fit their prompts to
`context_length` tokens of the model's tokenizer.

The task functions size prompts in bytes (the byte-level tokenizer's tokens). For another
tokenizer the byte length is rescaled by the measured tokens-per-byte ratio (a few rounds, each
from the same random state, so the content stays a pure function of the seed) and the longest
prompt that is not longer than `context_length` tokens is kept.
"""

from __future__ import annotations

import random

from nats_model.data.tasks import split_question as tasks_split_question

from .base import CountTokens, Instance, Param, Workload, chat_param, chat_parts
from .scoring import exact_match

FIT_ROUNDS = 6
HAYSTACKS = ("repeat", "text")


def common_params(context_length: int) -> tuple[Param, ...]:
    from nats_model.data.tasks import DEFAULT_FILLER

    return (
        Param("context_length", "int", context_length, "prompt length in tokens of the model's tokenizer",
              minimum=16, maximum=1_000_000),
        Param("depth", "float", None, "where the (asked) needle sits in the filler, 0 = start, 1 = end; "
              "null draws a depth per instance uniformly in [0, 1]", minimum=0.0, maximum=1.0, nullable=True),
        Param("filler", "str", DEFAULT_FILLER, "the text repeated around the needles"),
        Param("haystack", "str", "repeat", "repeat: the filler repeated; text: real English text around the "
              "needles (the standard library's docstrings, held-out split, or the .txt files of text_dir), a "
              "passage drawn per instance", choices=HAYSTACKS),
        Param("text_dir", "str", None, "haystack=text: a local folder of .txt files (default: the standard "
              "library's docstrings)", nullable=True),
        chat_param(),
    )


def split_question(prompt: str) -> dict:
    """`chat_parts` of a task prompt (the split is `nats_model.data.tasks.split_question`, shared with
    the fine-tuning data so the scorers train on the format they are evaluated on)."""
    return chat_parts(*tasks_split_question(prompt))


def context_chars(prompt: str) -> int | None:
    """Characters of a task prompt before its question: the last line when it holds the question
    ("What is the pass key? The pass key is "), else the line before the answer prefix ("Recall q e o."
    then "Answer: "). None when the prompt has no line break."""
    line_start = prompt.rfind("\n") + 1
    if line_start == 0:
        return None
    if prompt.rfind("? ", line_start) >= 0:
        return line_start
    return prompt.rfind("\n", 0, line_start - 1) + 1 or None


def fit_prompt(task, rng: random.Random, kwargs: dict, context_length: int,
               count_tokens: CountTokens) -> tuple[str, str]:
    """(prompt, answer) of `task` whose prompt has at most `context_length` tokens (as close as
    the filler's granularity allows); every round starts from the same random state."""
    state = rng.getstate()
    sample = kwargs.get("filler") or "x"
    sample = sample * (1 + 256 // max(len(sample), 1))
    bytes_per_token = len(sample.encode("utf-8")) / max(count_tokens(sample), 1)
    n_bytes = max(1, round(context_length * bytes_per_token))  # == context_length at byte level
    best: tuple[str, str] | None = None
    best_tokens = -1
    first_error: ValueError | None = None
    for _ in range(FIT_ROUNDS):
        rng.setstate(state)
        try:
            prompt, answer = task(rng, context_length=n_bytes, **kwargs)
        except ValueError as exc:
            first_error = first_error or exc
            if best is not None or n_bytes >= 8 * context_length * bytes_per_token:
                break
            n_bytes = int(n_bytes * 1.5) + 1  # too short in bytes; it may still fit in tokens
            continue
        tokens = count_tokens(prompt)
        if tokens == context_length:
            return prompt, answer
        if best_tokens < tokens < context_length:
            best, best_tokens = (prompt, answer), tokens
        new_bytes = max(1, round(n_bytes * context_length / max(tokens, 1)))
        if tokens > context_length:
            new_bytes = min(new_bytes, n_bytes - 1)
        if new_bytes == n_bytes:
            break
        n_bytes = new_bytes
    if best is None:
        if first_error is not None:
            raise first_error
        raise ValueError(
            f"context_length={context_length} is too small: the task's fixed text alone is longer "
            "under this tokenizer; use a larger context_length"
        )
    return best


class SyntheticWorkload(Workload):
    """A workload over one task format of `nats_model.data.tasks`: subclasses name the task
    (`task`), list their extra parameters, map parameters to the task's keyword arguments
    (`task_kwargs`) and score. The default scorer is exact match on the first line."""

    task: str = ""
    answer_margin_tokens: int = 2

    def task_kwargs(self, params: dict) -> dict:
        skip = {"context_length", "depth", "chat", "haystack", "text_dir"}
        return {k: v for k, v in params.items() if k not in skip}

    def check(self, params: dict) -> None:
        # Run the task once at a generous length so the task's own range checks (e.g. queries
        # <= pairs) surface as a ValueError at validation time, before any model runs.
        from nats_model.data import tasks

        kwargs = self.task_kwargs(params)
        if params.get("haystack") == "text":
            from nats_model.data.haystack import english_text

            try:  # a bad or empty text_dir fails here, before any model runs
                english_text(params.get("text_dir"))
            except ValueError as exc:
                raise ValueError(f"workload {self.name!r}: parameter 'text_dir': {exc}") from None
        elif params.get("text_dir") is not None:
            raise ValueError(f"workload {self.name!r}: parameter 'text_dir' needs haystack='text'")
        try:
            getattr(tasks, self.task)(random.Random(0), context_length=1 << 13, depth=0.5, **kwargs)
        except ValueError as exc:
            raise ValueError(f"workload {self.name!r}: {exc}") from None

    def make(self, rng: random.Random, params: dict, index: int, count_tokens: CountTokens,
             seed: int) -> Instance:
        from nats_model.data import tasks

        depth = params["depth"] if params["depth"] is not None else rng.random()
        kwargs = dict(self.task_kwargs(params), depth=depth)
        if params.get("haystack") == "text":  # a real-text passage, longer than any prompt of this length
            from nats_model.data.haystack import passage

            kwargs["filler"] = passage(rng, 8 * params["context_length"] + 256, params.get("text_dir"))
        prompt, answer = fit_prompt(getattr(tasks, self.task), rng, kwargs, params["context_length"],
                                    count_tokens)
        meta = {"depth": round(depth, 6), "prompt_tokens": count_tokens(prompt)}
        meta.update(self.extra_meta(prompt, answer, params))
        if params["chat"] == "on":
            meta["chat"] = split_question(prompt)
        max_new = count_tokens(answer) + self.answer_margin_tokens
        return Instance(id=self.instance_id(seed, index), workload=self.name, prompt=prompt, answer=answer,
                        max_new_tokens=max_new, meta=meta, context_chars=context_chars(prompt))

    def extra_meta(self, prompt: str, answer: str, params: dict) -> dict:
        return {}

    def score(self, prediction: str, instance: Instance) -> float:
        return exact_match(prediction, instance.answer)
