"""Text formats of the synthetic long-context tasks, as pure functions of (rng, params).

Each task returns `(prompt, answer)`: the model must generate `answer` right after `prompt`
(trained models then emit `ANSWER_END`). `context_length` is the prompt length in tokens of the
byte-level tokenizer (UTF-8 bytes) and the prompt has exactly that length when the filler is
ASCII. `depth` in [0, 1] places the (asked) needle from the start (0) to the end (1) of the
filler; needles are snapped to the nearest sentence boundary of the filler. Training
(`nats_model.train`) and the workloads (`services.workloads`) use these same functions.

Formats (keys are single characters so that one key is one token):
- passkey: "... The pass key is 12345. ..."
  + "\\nWhat is the pass key? The pass key is " -> "12345"
- niah_multikey: needles "The number for K is 12345. ", one asked:
  "\\nWhat is the number for K? The number for K is " -> "12345"
- kv_recall: pairs "k=123. " spread over the filler; "\\nRecall b k x.\\nAnswer: " -> "b=5 k=123 x=40"
  style, i.e. "key=value" pairs joined by single spaces in the asked order (see `parse_pairs`).
- variable_tracking: chains "a=123. " ... "q=a. " ... "z=q. " (plus distractor chains);
  "\\nWhat is z? z=" -> "123"
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

DEFAULT_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
ANSWER_END = "\n"

PASSKEY_HEAD = "Find the pass key.\n"
NIAH_HEAD = "Remember the numbers.\n"
KV_HEAD = "Remember the values.\n"
VAR_HEAD = "Track the variables.\n"

NIAH_KEYS = string.ascii_uppercase
KV_KEYS = string.ascii_lowercase
VAR_NAMES = string.ascii_lowercase


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _check_depth(depth: float) -> None:
    if not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")


def _filler_stream(filler: str, n_bytes: int) -> str:
    """`n_bytes` bytes of `filler` repeated (cut at a byte; filler should be ASCII)."""
    if not filler:
        raise ValueError("filler must be a non-empty string")
    reps = n_bytes // max(1, _nbytes(filler)) + 2
    data = (filler * reps).encode("utf-8")[:n_bytes]
    return data.decode("utf-8", errors="ignore")


def _boundaries(text: str) -> list[int]:
    """Character offsets where a filler sentence starts (plus both ends)."""
    out = [0]
    for i in range(2, len(text) + 1):
        if text[i - 2 : i] in (". ", "? ", "! ", ".\n"):
            out.append(i)
    if out[-1] != len(text):
        out.append(len(text))
    return out


def _nearest(bounds: list[int], target: float) -> int:
    return min(bounds, key=lambda b: (abs(b - target), b))


def assemble(
    head: str,
    needles: list[tuple[str, float]],
    tail: str,
    context_length: int,
    filler: str = DEFAULT_FILLER,
) -> str:
    """head + filler with each (needle, depth) inserted at its depth + tail, `context_length` bytes.

    Raises ValueError naming `context_length` when the fixed parts alone are longer.
    """
    fixed = _nbytes(head) + _nbytes(tail) + sum(_nbytes(n) for n, _ in needles)
    n_fill = int(context_length) - fixed
    if n_fill < 0:
        raise ValueError(
            f"context_length={context_length} is too small for this task: its fixed text alone is "
            f"{fixed} tokens; use context_length >= {fixed}"
        )
    stream = _filler_stream(filler, n_fill)
    bounds = _boundaries(stream)
    placed = sorted(((_nearest(bounds, d * len(stream)), i) for i, (_, d) in enumerate(needles)))
    parts, prev = [head], 0
    for pos, i in placed:
        parts.append(stream[prev:pos])
        parts.append(needles[i][0])
        prev = pos
    parts.append(stream[prev:])
    parts.append(tail)
    return "".join(parts)


def _number(rng: random.Random, digits: int) -> str:
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    lo = 10 ** (digits - 1) if digits > 1 else 0
    return str(rng.randint(lo, 10**digits - 1))


def _distinct_numbers(rng: random.Random, n: int, digits: int) -> list[str]:
    if n > 9 * 10 ** (digits - 1):
        raise ValueError(f"cannot draw {n} distinct {digits}-digit numbers")
    seen: list[str] = []
    while len(seen) < n:
        v = _number(rng, digits)
        if v not in seen:
            seen.append(v)
    return seen


def passkey(
    rng: random.Random, *, context_length: int = 1024, depth: float = 0.5, filler: str = DEFAULT_FILLER,
    digits: int = 5,
) -> tuple[str, str]:
    """A `digits`-digit pass key hidden at `depth` in filler; the answer is the key."""
    _check_depth(depth)
    key = _number(rng, digits)
    needle = f"The pass key is {key}. "
    tail = "\nWhat is the pass key? The pass key is "
    return assemble(PASSKEY_HEAD, [(needle, depth)], tail, context_length, filler), key


def _check_niah(depth: float, num_keys: int, num_queries: int) -> None:
    _check_depth(depth)
    if not 1 <= num_keys <= len(NIAH_KEYS):
        raise ValueError(f"num_keys must be in [1, {len(NIAH_KEYS)}], got {num_keys}")
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")


def _niah_needles(rng: random.Random, depth: float, keys: list[str], values: list[str],
                  asked: int) -> list[tuple[str, float]]:
    """The needles "The number for K is V. ": the asked one at `depth`, the others at random depths."""
    return [(f"The number for {k} is {v}. ", depth if i == asked else rng.random())
            for i, (k, v) in enumerate(zip(keys, values, strict=True))]


def niah_multikey(
    rng: random.Random, *, context_length: int = 1024, depth: float = 0.5, filler: str = DEFAULT_FILLER,
    num_keys: int = 4, digits: int = 5, num_queries: int = 1,
) -> tuple[str, str]:
    """`num_keys` needles "The number for K is V." (K one uppercase letter); the asked one at `depth`.

    `num_queries` > 1 (training data: more supervised look-ups per sequence) asks that many distinct
    keys (at most `num_keys`): the answer's first line is the first asked value, each further line
    the next question and its value ("What is the number for K? The number for K is V"). The
    prompt and the first line do not depend on `num_queries`."""
    _check_niah(depth, num_keys, num_queries)
    keys = rng.sample(NIAH_KEYS, num_keys)
    values = _distinct_numbers(rng, num_keys, digits)
    asked = rng.randrange(num_keys)
    needles = _niah_needles(rng, depth, keys, values, asked)
    tail = f"\nWhat is the number for {keys[asked]}? The number for {keys[asked]} is "
    answer = values[asked]
    if num_queries > 1:
        others = rng.sample([i for i in range(num_keys) if i != asked], min(num_queries, num_keys) - 1)
        answer += "".join(f"{ANSWER_END}{_niah_question(keys[i])}{values[i]}" for i in others)
    return assemble(NIAH_HEAD, needles, tail, context_length, filler), answer


def _niah_question(key: str) -> str:
    return f"What is the number for {key}? The number for {key} is "


def niah_drill(
    rng: random.Random, *, context_length: int = 256, depth: float = 0.5, filler: str = DEFAULT_FILLER,
    num_keys: int = 4, digits: int = 5, num_queries: int = 4,
) -> tuple[str, str]:
    """Training drill for niah_multikey's key look-up (a training task, not a workload): the same
    needles in filler, then `num_queries` short look-ups "The number for K is " (keys drawn with
    replacement), the first one ending the prompt. Every look-up's value is supervised and a
    look-up costs 26 tokens instead of the workload's 45-token question, so a short sequence holds
    several key-matching targets. Answer: the first value, then one "The number for K is V" line
    per further look-up (`ANSWER_END`-separated: the first line is what exact match scores)."""
    _check_niah(depth, num_keys, num_queries)
    keys = rng.sample(NIAH_KEYS, num_keys)
    values = _distinct_numbers(rng, num_keys, digits)
    asked = [rng.randrange(num_keys) for _ in range(num_queries)]
    needles = _niah_needles(rng, depth, keys, values, asked[0])
    tail = f"\nThe number for {keys[asked[0]]} is "
    answer = values[asked[0]] + "".join(
        f"{ANSWER_END}The number for {keys[i]} is {values[i]}" for i in asked[1:])
    return assemble(NIAH_HEAD, needles, tail, context_length, filler), answer


def kv_recall(
    rng: random.Random, *, context_length: int = 1024, depth: float = 0.5, filler: str = DEFAULT_FILLER,
    num_pairs: int = 8, num_queries: int = 3, digits: int = 3,
) -> tuple[str, str]:
    """`num_pairs` "k=V." pairs spread over the filler, the first asked one at `depth`;
    the answer lists "k=V" for the `num_queries` asked keys, joined by spaces."""
    _check_depth(depth)
    if not 1 <= num_queries <= num_pairs <= len(KV_KEYS):
        raise ValueError(
            f"need 1 <= num_queries <= num_pairs <= {len(KV_KEYS)}, got num_pairs={num_pairs}, "
            f"num_queries={num_queries}"
        )
    keys = rng.sample(KV_KEYS, num_pairs)
    values = [_number(rng, digits) for _ in keys]
    asked = rng.sample(range(num_pairs), num_queries)
    needles = [
        (f"{k}={v}. ", depth if i == asked[0] else rng.random())
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]
    tail = "\nRecall " + " ".join(keys[i] for i in asked) + ".\nAnswer: "
    answer = " ".join(f"{keys[i]}={values[i]}" for i in asked)
    return assemble(KV_HEAD, needles, tail, context_length, filler), answer


def variable_tracking(
    rng: random.Random, *, context_length: int = 1024, depth: float = 0.5, filler: str = DEFAULT_FILLER,
    num_hops: int = 3, num_chains: int = 2, digits: int = 3,
) -> tuple[str, str]:
    """Chains "a=V." then "b=a." ... (`num_hops` copies); the asked chain starts at `depth`,
    its links follow in order; the answer is the value of the asked chain's last variable."""
    _check_depth(depth)
    if num_hops < 1 or num_chains < 1 or num_chains * (num_hops + 1) > len(VAR_NAMES):
        raise ValueError(
            f"need num_hops >= 1, num_chains >= 1 and num_chains*(num_hops+1) <= {len(VAR_NAMES)}, "
            f"got num_hops={num_hops}, num_chains={num_chains}"
        )
    names = rng.sample(VAR_NAMES, num_chains * (num_hops + 1))
    values = _distinct_numbers(rng, num_chains, digits)
    needles: list[tuple[str, float]] = []
    for c in range(num_chains):
        chain = names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
        start = depth if c == 0 else rng.random()
        # links in order at increasing depths between the chain start and the end
        depths = sorted([start] + [start + (1 - start) * rng.random() for _ in range(num_hops)])
        needles.append((f"{chain[0]}={values[c]}. ", depths[0]))
        for h in range(1, num_hops + 1):
            needles.append((f"{chain[h]}={chain[h - 1]}. ", depths[h]))
    last = names[num_hops]
    tail = f"\nWhat is {last}? {last}="
    return assemble(VAR_HEAD, needles, tail, context_length, filler), values[0]


def parse_pairs(text: str) -> dict[str, str]:
    """The "k=V" pairs of a kv_recall answer (or generation) as a dict; other words are ignored."""
    out: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key and value and key not in out:
            out[key] = value.rstrip(".")
    return out


TaskFn = Callable[..., tuple[str, str]]
TASKS: dict[str, TaskFn] = {
    "passkey": passkey,
    "niah_multikey": niah_multikey,
    "niah_drill": niah_drill,
    "kv_recall": kv_recall,
    "variable_tracking": variable_tracking,
}


def make_example(name: str, rng: random.Random, **params) -> tuple[str, str]:
    """Run task `name` (one of `TASKS`) with `params`; clear error for an unknown name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name](rng, **params)


def max_answer_tokens(name: str, **params) -> int:
    """Upper bound on the answer length in tokens (without `ANSWER_END`) for these params."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    if name == "kv_recall":
        digits = params.get("digits", 3)
        return params.get("num_queries", 3) * (digits + 3)
    if name == "niah_drill":
        digits = params.get("digits", 5)
        return digits + (params.get("num_queries", 4) - 1) * (len(ANSWER_END) + len("The number for K is ") + digits)
    if name == "niah_multikey":
        digits = params.get("digits", 5)
        extra = min(params.get("num_queries", 1), params.get("num_keys", 4)) - 1
        return digits + extra * (len(ANSWER_END) + len(_niah_question("K")) + digits)
    return params.get("digits", 5 if name in ("passkey", "niah_multikey") else 3)


def split_question(prompt: str) -> tuple[str, str]:
    """(user turn, assistant prefix) of a task prompt for chat models: the prompt's last line is the
    question followed by the answer prefix ("What is the pass key? The pass key is ") or the prefix
    alone ("Answer: "); everything up to the question mark is the user turn."""
    line_start = prompt.rfind("\n") + 1
    q = prompt.rfind("? ", line_start)
    if q >= 0:
        return prompt[: q + 1], prompt[q + 2:]
    return prompt[: max(line_start - 1, 0)], prompt[line_start:]
