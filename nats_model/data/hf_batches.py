"""Training batches for Hugging Face models: the workloads mix re-tokenised, plus local jsonl/parquet rows.

`BatchMaker` (nats_model.train.batches) writes byte ids; a Hugging Face model has its own tokenizer.
`TokenizedBatchMaker` draws the same kinds (real-text windows, synthetic tasks from
`nats_model.data.tasks`) as text and encodes them with the model's tokenizer, and adds local files:
kvpress columns (`context`, `question`, `answer_prefix`, `answer`) or LongBench columns (`context`,
`input`, `answers`). Rows are `prompt + answer + "\\n"`, right-padded; the answer tokens are the loss
positions (`Batch.answer_mask`, the first answer line), the prompt's targets get `prompt_loss_weight`.
A local row longer than the sequence has the middle of its context cut (as LongBench does).
Local rows are parsed by `nats_model.data.local_rows` (shared with the `local_dataset` workload).
"""

from __future__ import annotations

import random
from pathlib import Path

from nats_model.data.local_rows import (
    KVPRESS_COLUMNS,
    LONGBENCH_COLUMNS,
    column_format,
    prompt_answer,
    read_rows,
)
from nats_model.data.tasks import ANSWER_END, DEFAULT_FILLER, make_example, max_answer_tokens, split_question
from nats_model.data.text import TextCorpus
from nats_model.train.batches import Batch, collate, draw_params
from nats_model.train.config import DataConfig


def read_local_rows(path: str | Path) -> list[tuple[str, str, str]]:
    """(context, question part, answer) of every row of a .jsonl/.parquet file in kvpress or LongBench
    columns (`nats_model.data.local_rows`); ValueError naming the file and what is wrong."""
    label = "local_data path"
    rows = read_rows(path, label)
    fmt = column_format(rows[0])
    if fmt is None:
        raise ValueError(f"{label}: {path} has columns {sorted(rows[0])}; expected kvpress "
                         f"{list(KVPRESS_COLUMNS)} or LongBench {list(LONGBENCH_COLUMNS)}")
    parts = [prompt_answer(r, fmt, f"{label}: {path}") for r in rows]
    return [(context, question, answers[0]) for context, question, answers in parts]


class TokenizedBatchMaker:
    """Draws batches of the configured mix (text, tasks, local files) tokenised by a Hugging Face
    tokenizer; deterministic given the `random.Random` it is handed. `local` is a list of
    (path, weight); each file is a kind named `local:<file name>`."""

    def __init__(self, data: DataConfig, tokenizer, local: list[tuple[str, float]] = (), split: str = "train"):
        self.data = data
        self.tok = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:  # e.g. a plain byte-level vocabulary: pad with the end marker, as BatchMaker
            # does (padded targets are ignored and causal attention never lets them reach a real position)
            self.pad_id = self.encode(ANSWER_END)[-1]
        self.corpus = (TextCorpus.load(split, data.text_dir, max_bytes=data.text_max_bytes)
                       if data.text_weight > 0 else None)
        self.local = {f"local:{Path(p).name}": read_local_rows(p) for p, _ in local}
        self.kinds = (["text"] if data.text_weight > 0 else []) + list(data.tasks) + list(self.local)
        self.weights = (([data.text_weight] if data.text_weight > 0 else [])
                        + [t.weight for t in data.tasks.values()] + [float(w) for _, w in local])
        # bytes per token of task filler text: converts a token budget into a context length in bytes
        filler = DEFAULT_FILLER * 8
        self.bytes_per_token = len(filler.encode("utf-8")) / max(1, len(self.encode(filler)))

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, prompt: str) -> list[int]:
        """A task prompt's ids: plain, or with `data.chat` the user turn through the chat template and
        the answer prefix opening the assistant turn (as the workloads encode `chat=on`)."""
        if not self.data.chat:
            return self.encode(prompt)
        if not getattr(self.tok, "chat_template", None):
            raise ValueError("data.chat is true but the model's tokenizer has no chat template")
        user, prefix = split_question(prompt)
        text = self.tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                            tokenize=False)
        return self.encode(text + prefix)

    def _row(self, p_ids: list[int], answer: str, seq_len: int) -> tuple[list[int], list[float], list[bool]]:
        """Ids (seq_len + 1), target weights and answer flags (seq_len) of prompt + answer + end marker."""
        a_ids = self.encode(answer + ANSWER_END)
        n_first = len(self.encode(answer.split(ANSWER_END)[0]))
        ids = (p_ids + a_ids)[: seq_len + 1]
        n_real = len(ids)
        ids = ids + [self.pad_id] * (seq_len + 1 - n_real)
        weights, is_answer = [], []
        for t in range(seq_len):  # target t predicts ids[t + 1]
            j = t + 1
            if j >= n_real:
                weights.append(0.0)
                is_answer.append(False)
            elif j < len(p_ids):
                weights.append(self.data.prompt_loss_weight)
                is_answer.append(False)
            else:
                weights.append(1.0)
                is_answer.append(j < len(p_ids) + n_first)
        return ids, weights, is_answer

    def text_sequence(self, rng: random.Random, seq_len: int):
        assert self.corpus is not None
        n_bytes = int((seq_len + 1) * self.bytes_per_token * 1.5) + 16
        for _ in range(6):
            text = bytes(self.corpus.sample(rng, n_bytes)).decode("utf-8", errors="replace")
            ids = self.encode(text)
            if len(ids) >= seq_len + 1:
                return ids[: seq_len + 1], [1.0] * seq_len, [False] * seq_len
            n_bytes *= 2
        raise ValueError(f"could not draw {seq_len + 1} tokens of text from the corpus")

    def task_sequence(self, rng: random.Random, task: str, seq_len: int):
        return self._row(*self.task_example(rng, task, seq_len), seq_len)

    def task_example(self, rng: random.Random, task: str, seq_len: int) -> tuple[list[int], str]:
        """(prompt ids, answer text) of one `task` example whose prompt + answer + end marker fit in
        `seq_len + 1` tokens; the prompt length is drawn as in `BatchMaker` (in tokens)."""
        params = self.data.tasks[task].params
        maxed = {k: (max(v) if isinstance(v, list | tuple) else v) for k, v in params.items()}
        answer_budget = int((max_answer_tokens(task, **maxed) + len(ANSWER_END)) / self.bytes_per_token) + 4
        room = seq_len + 1 - answer_budget
        if room < 1:
            raise ValueError(f"{task}: the answer does not fit in {seq_len} tokens")
        target = rng.randint(max(1, int(self.data.min_context_fraction * room)), room)  # prompt tokens
        depth = rng.random()
        drawn = draw_params(rng, params)
        n_bytes = max(1, int(target * self.bytes_per_token))
        room_bytes = max(1, int(room * self.bytes_per_token))
        for _ in range(8):  # shrink the context until prompt + answer fit
            try:
                prompt, answer = make_example(task, rng, context_length=n_bytes, depth=depth, **drawn)
            except ValueError:  # too short for the drawn params: use all the room the sequence leaves
                if n_bytes >= room_bytes:
                    raise
                n_bytes = room_bytes
                continue
            p_ids = self.encode_prompt(prompt)
            total = len(p_ids) + len(self.encode(answer + ANSWER_END))
            if total <= seq_len + 1:
                return p_ids, answer
            n_bytes = int(n_bytes * 0.95 * (seq_len + 1) / total)
        raise ValueError(f"{task}: no example fits in {seq_len} tokens")

    def local_sequence(self, rng: random.Random, kind: str, seq_len: int):
        context, question, answer = rng.choice(self.local[kind])
        q_ids, c_ids = self.encode(question), self.encode(context)
        a_len = len(self.encode(answer + ANSWER_END))
        room = seq_len + 1 - a_len - len(q_ids)
        if room < 2:
            raise ValueError(f"{kind}: question + answer ({len(q_ids) + a_len} tokens) do not fit in {seq_len}")
        if len(c_ids) > room:  # cut the middle of the context
            c_ids = c_ids[: room // 2] + c_ids[len(c_ids) - (room - room // 2):]
        return self._row(c_ids + q_ids, answer, seq_len)

    def sequence(self, rng: random.Random, kind: str, seq_len: int):
        if kind == "text":
            return self.text_sequence(rng, seq_len)
        if kind in self.local:
            return self.local_sequence(rng, kind, seq_len)
        for _ in range(3):
            try:
                return self.task_sequence(rng, kind, seq_len)
            except ValueError:
                continue
        if self.corpus is None:
            raise ValueError(f"task {kind!r} does not fit in seq_len={seq_len}; raise seq_len or lower its params")
        return self.text_sequence(rng, seq_len)

    def batch(self, rng: random.Random, batch_size: int, seq_len: int, kinds: list[str] | None = None,
              weights: dict[str, float] | None = None) -> Batch:
        """A batch of `batch_size` rows of `seq_len` tokens (inputs) following the mix weights."""
        mix = [(weights or {}).get(k, w) for k, w in zip(self.kinds, self.weights, strict=True)]
        kinds = kinds or rng.choices(self.kinds, weights=mix, k=batch_size)
        return collate([self.sequence(rng, k, seq_len) for k in kinds], kinds)
