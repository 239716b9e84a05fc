"""Training batches from the data mix: real-text windows and synthetic task examples.

A sequence of `seq_len + 1` tokens gives inputs `[:-1]` and targets `[1:]`, with a loss weight
per target. Task examples are prompt + answer + `ANSWER_END`, padded with ignored targets (-1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from nats_model.data.tasks import ANSWER_END, make_example, max_answer_tokens
from nats_model.data.text import TextCorpus
from nats_model.train.config import DataConfig

PAD_TOKEN = ord("\n")


@dataclass
class Batch:
    """inputs/targets (B, T) int64 (targets -1 = ignored), weights (B, T) float, kinds per row,
    answer_mask (B, T) bool marking the target positions of the answer's first line (without the end
    marker): what greedy evaluation scores."""

    inputs: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    answer_mask: torch.Tensor
    kinds: list[str]


def draw_params(rng: random.Random, params: dict) -> dict:
    """Task params with every `[lo, hi]` integer range replaced by a uniform draw."""
    out = {}
    for k, v in params.items():
        if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
            out[k] = rng.randint(int(v[0]), int(v[1]))
        else:
            out[k] = v
    return out


def _max_params(params: dict) -> dict:
    return {k: (max(v) if isinstance(v, list | tuple) else v) for k, v in params.items()}


def task_sequence(
    rng: random.Random, task: str, params: dict, seq_len: int, min_context_fraction: float,
    prompt_loss_weight: float, depth: float | None = None, context_length: int | None = None,
) -> tuple[list[int], list[float], list[bool]]:
    """Tokens (seq_len + 1), per-target weights (seq_len) and answer flags (seq_len) of one example."""
    # answer room for the largest parameters of the ranges (the draw order is part of the data stream
    # the shipped models were trained on: context length, depth, then the parameters)
    budget = max_answer_tokens(task, **_max_params(params)) + len(ANSWER_END)
    room = seq_len + 1 - budget
    if room < 1:
        raise ValueError(f"{task}: a {budget}-token answer does not fit in {seq_len} tokens")
    if context_length is None:
        context_length = rng.randint(max(1, int(min_context_fraction * room)), room)
    depth = rng.random() if depth is None else depth
    drawn = draw_params(rng, params)
    try:
        prompt, answer = make_example(task, rng, context_length=context_length, depth=depth, **drawn)
    except ValueError:  # too short for the drawn params: use all the room the sequence leaves
        prompt, answer = make_example(task, rng, context_length=room, depth=depth, **drawn)
    p_ids = list(prompt.encode("utf-8"))
    a_ids = list((answer + ANSWER_END).encode("utf-8"))
    # answer_mask: the first answer line (what greedy evaluation scores); further lines (more queries
    # in one sequence) are trained on but not counted by the teacher-forced exact match
    n_first = len(answer.split(ANSWER_END)[0].encode("utf-8"))
    ids = (p_ids + a_ids)[: seq_len + 1]
    n_real = len(ids)
    ids = ids + [PAD_TOKEN] * (seq_len + 1 - n_real)
    # target t predicts ids[t+1]: prompt targets are t+1 < len(p), answer targets after it
    weights, is_answer = [], []
    for t in range(seq_len):
        j = t + 1
        if j >= n_real:
            weights.append(0.0)
            is_answer.append(False)
        elif j < len(p_ids):
            weights.append(prompt_loss_weight)
            is_answer.append(False)
        else:
            weights.append(1.0)
            is_answer.append(j < len(p_ids) + n_first)
    return ids, weights, is_answer


class BatchMaker:
    """Draws batches of the configured mix; deterministic given the `random.Random` it is handed."""

    def __init__(self, data: DataConfig, split: str = "train"):
        self.data = data
        self.corpus = (
            TextCorpus.load(split, data.text_dir, max_bytes=data.text_max_bytes) if data.text_weight > 0 else None
        )
        # every listed task is a kind, weight 0 included: such a task is drawn only in the stages whose
        # `weights` turn it on (a zero weight is never drawn and does not change the random stream)
        self.kinds = (["text"] if data.text_weight > 0 else []) + list(data.tasks)
        self.weights = ([data.text_weight] if data.text_weight > 0 else []) + [t.weight for t in data.tasks.values()]

    def text_sequence(self, rng: random.Random, seq_len: int) -> tuple[list[int], list[float], list[bool]]:
        assert self.corpus is not None
        return self.corpus.sample(rng, seq_len + 1), [1.0] * seq_len, [False] * seq_len

    def sequence(self, rng: random.Random, kind: str, seq_len: int, **kw):
        """One row of `kind`; a task example that cannot fit in `seq_len` is redrawn (its params
        may be ranges) and after 3 misses replaced by a text window (a curriculum's short stages)."""
        if kind == "text":
            return self.text_sequence(rng, seq_len)
        for _ in range(3):
            try:
                return task_sequence(rng, kind, self.data.tasks[kind].params, seq_len,
                                     self.data.min_context_fraction, self.data.prompt_loss_weight, **kw)
            except ValueError:
                continue
        if self.corpus is None:
            raise ValueError(f"task {kind!r} does not fit in seq_len={seq_len} with params "
                             f"{self.data.tasks[kind].params}; raise seq_len or lower the task params")
        return self.text_sequence(rng, seq_len)

    def batch(self, rng: random.Random, batch_size: int, seq_len: int, kinds: list[str] | None = None,
              weights: dict[str, float] | None = None) -> Batch:
        """A batch of `batch_size` rows; `kinds` fixes the row kinds, else they follow the mix weights
        (`weights` overrides some of them by kind name)."""
        mix = [(weights or {}).get(k, w) for k, w in zip(self.kinds, self.weights, strict=True)]
        kinds = kinds or rng.choices(self.kinds, weights=mix, k=batch_size)
        rows = [self.sequence(rng, k, seq_len) for k in kinds]
        return collate(rows, kinds)


def collate(rows: list[tuple[list[int], list[float], list[bool]]], kinds: list[str]) -> Batch:
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long)  # (B, T+1)
    weights = torch.tensor([r[1] for r in rows], dtype=torch.float32)  # (B, T)
    answer = torch.tensor([r[2] for r in rows], dtype=torch.bool)  # (B, T)
    targets = ids[:, 1:].clone()
    targets[weights == 0] = -1
    return Batch(inputs=ids[:, :-1], targets=targets, weights=weights, answer_mask=answer, kinds=kinds)


def weighted_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean over rows of each row's weighted mean cross-entropy. logits (B, T, V)."""
    ce = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), batch.targets.clamp(min=0), reduction="none"
    )  # (B, T)
    w = batch.weights
    per_row = (ce * w).sum(1) / w.sum(1).clamp(min=1e-8)  # (B,)
    return per_row.mean()


def answer_exact_match(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per row: 1 when the argmax at every answer position is the answer token (teacher forcing,
    equal to greedy exact match), NaN for rows without an answer. logits (B, T, V) -> (B,)."""
    correct = (logits.argmax(-1) == batch.targets) | ~batch.answer_mask  # (B, T)
    out = correct.all(1).float()
    out[~batch.answer_mask.any(1)] = float("nan")
    return out
