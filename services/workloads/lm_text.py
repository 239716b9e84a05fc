"""`lm_text`: streaming perplexity over long real text.

Each instance is a window of held-out text of `context_length` tokens; the model scores it
token by token with the policy active (`nats_model.engine.generation.score_run`, as StreamingLLM evaluates
streaming perplexity; `chunk_size` > 1 feeds several tokens per step, faster; `prompt_tokens` > 0
prefills that many first tokens as a prompt, so prompt-compressing policies such as SnapKV act). The default corpus is the Python standard library's own source files
(real text on every machine), split into train and held-out parts by file
(`nats_model.data.text`); `text_dir=DIR` takes any local folder of .txt files (for example PG-19),
split the same way; `split=all` reads every file (a folder that is a test set already).

Reported numbers: a perplexity has no accuracy, so a cell's `accuracy` is None; its `extras`
hold `nll` (mean negative log-likelihood per predicted token, nats) and `ppl` = exp(nll), over
all predicted tokens of all instances. Each instance's score is its own mean NLL.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

from .base import CountTokens, Instance, Param, Workload

# Bytes per token assumed first for a non-byte tokenizer; the window grows until it is long enough.
FIRST_BYTES_PER_TOKEN = 4


SPLITS = ("heldout", "train", "all")


@lru_cache(maxsize=4)
def _corpus(text_dir: str | None, split: str):
    from nats_model.data.text import TextCorpus

    if split != "all":
        return TextCorpus.load(split, text_dir=text_dir)
    parts = []
    for name in ("train", "heldout"):
        try:
            parts.append(TextCorpus.load(name, text_dir=text_dir))
        except ValueError:  # an empty split of a small folder
            continue
    if not parts:
        raise ValueError(f"text_dir={text_dir!r} holds no text")
    return TextCorpus(data=b"".join(p.data for p in parts), n_files=sum(p.n_files for p in parts))


class LmText(Workload):
    name = "lm_text"
    description = "streaming perplexity over held-out real text (stdlib source, or text_dir of .txt)"
    metric = "perplexity (accuracy None; extras.ppl, extras.nll)"
    context_split = False  # a scored text has no question: compress="context" is refused for it
    params = (
        Param("context_length", "int", 1024, "tokens scored per instance", minimum=2, maximum=10_000_000),
        Param("text_dir", "str", None, "a local folder of .txt files (default: the Python stdlib's source)",
              nullable=True),
        Param("split", "str", "heldout", "which files: the held-out split (models never trained on it), "
              "the train split, or all files (e.g. a folder that is a test set already)", choices=SPLITS),
        Param("chunk_size", "int", 1, "tokens fed per scoring step: 1 = token by token (StreamingLLM's "
              "streaming perplexity); larger is faster and lets the policy evict once per chunk", minimum=1),
        Param("prompt_tokens", "int", 0, "the first tokens are a prompt, prefilled in chunks and ended like a "
              "generation prompt (prompt-compressing policies such as snapkv compress there); 0 = stream all",
              minimum=0),
    )

    def check(self, params: dict) -> None:
        try:
            _corpus(params["text_dir"], params["split"])
        except ValueError as exc:
            raise ValueError(f"workload 'lm_text': parameters text_dir/split: {exc} (split='all' uses every "
                             "file)") from None

    def make(self, rng: random.Random, params: dict, index: int, count_tokens: CountTokens,
             seed: int) -> Instance:
        corpus = _corpus(params["text_dir"], params["split"])
        want = params["context_length"]
        n_bytes = want + 8  # a few spare bytes: a cut multi-byte character is dropped when decoding
        state = rng.getstate()
        while True:
            rng.setstate(state)
            text = bytes(corpus.sample(rng, n_bytes)).decode("utf-8", errors="ignore")
            if count_tokens(text) >= want or n_bytes > 64 * want:
                break
            n_bytes = max(n_bytes * 2, want * FIRST_BYTES_PER_TOKEN)
        return Instance(id=self.instance_id(seed, index), workload=self.name, prompt=text, answer="",
                        max_new_tokens=0, kind="nll",
                        meta={"max_tokens": want, "text_dir": params["text_dir"], "split": params["split"],
                              "chunk_size": params["chunk_size"], "prompt_tokens": params["prompt_tokens"]})

    def score(self, prediction: str, instance: Instance) -> float:
        raise TypeError("lm_text is scored by per-token NLL (services.evaluation), not by generated text")


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean NLL); inf for an empty count."""
    return math.exp(total_nll / n_tokens) if n_tokens else math.inf
