"""The NAtS paper's published points, shown beside ours and never mixed with them.

Source: summaries of "Neural Attention Search" (Deng & Lindauer, arXiv 2502.13251,
NeurIPS 2025) as restated in the project's method page (docs/METHOD.md, "Published results"). These
numbers are published, not measured here; the paper's own tables are the final word.
Nothing else is added: no number below comes from anywhere but that section.
"""

from __future__ import annotations

import pandas as pd

LABEL = "published, not measured here"
SOURCE_NOTE = (
    "**Published, not measured here.** These points come from summaries of the NAtS paper "
    "(Deng & Lindauer, *Neural Attention Search*, arXiv 2502.13251, NeurIPS 2025); "
    "the paper's own tables are the final word. They are at 7-8B scale (or PG-19 from "
    "scratch), so they show where the method is expected to land, not what this benchmark measured."
)

# (setting, policy, kept fraction low, kept fraction high, what the paper reports there)
_KEPT = (
    ("PG-19, trained from scratch", "nats", 0.03, 0.03,
     "keeps about 3% of the KV cache with lower perplexity than H2O at 12.5%"),
    ("PG-19, trained from scratch", "h2o", 0.125, 0.125,
     "H2O at 12.5% kept: higher perplexity than NAtS at about 3%"),
    ("Llama-3.1-8B / Mistral-7B, LongBench and RULER", "nats", 0.15, 0.25,
     "about 15-25% of the KV cache kept, close to full attention"),
    ("Llama-3.1-8B / Mistral-7B, LongBench and RULER", "h2o", 0.25, 0.25,
     "h2o at 25% kept: NAtS scores above it"),
    ("Llama-3.1-8B / Mistral-7B, LongBench and RULER", "h2o", 0.5, 0.5,
     "h2o at 50% kept: NAtS scores above it"),
    ("Llama-3.1-8B / Mistral-7B, LongBench and RULER", "streaming_llm", 0.25, 0.25,
     "streaming_llm at 25% kept: NAtS scores above it"),
    ("Llama-3.1-8B / Mistral-7B, LongBench and RULER", "streaming_llm", 0.5, 0.5,
     "streaming_llm at 50% kept: NAtS scores above it"),
    ("Llama-3.1-8B / Mistral-7B, LongBench and RULER", "snapkv", 0.25, 0.25,
     "snapkv at 25% kept: NAtS scores above it"),
    ("Llama-3.1-8B / Mistral-7B, LongBench and RULER", "snapkv", 0.5, 0.5,
     "snapkv at 50% kept: NAtS scores above it"),
    ("Llama-3.1-8B / Mistral-7B, LongBench and RULER", "full", 1.0, 1.0,
     "full attention: the reference NAtS comes close to"),
)

# (quantity, published value) for the efficiency claims (H100).
_EFFICIENCY = (
    ("maximum context length (H100)", "200k -> 700k tokens"),
    ("prefill speed", "about 3x faster"),
    ("decode speed", "about 1.4x faster"),
)


def published_kept_fractions() -> pd.DataFrame:
    """The published kept-fraction points: setting, policy, kept_low, kept_high, claim, source."""
    df = pd.DataFrame(_KEPT, columns=["setting", "policy", "kept_low", "kept_high", "claim"])
    return df.assign(source=LABEL)


def canonical_policy(name: str) -> str:
    """A policy name with case, '_' and '-' ignored ('StreamingLLM' == 'streaming_llm')."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def align_policy_names(published: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    """`published` with each policy spelled as in `measured` when they name the same policy."""
    spelling = {canonical_policy(m): m for m in measured}
    return published.assign(policy=[spelling.get(canonical_policy(p), p) for p in published["policy"]])


def published_efficiency() -> pd.DataFrame:
    """The published efficiency claims of NAtS over full attention: quantity, published, source."""
    return pd.DataFrame(_EFFICIENCY, columns=["quantity", "published"]).assign(source=LABEL)
