"""The workload interface: parameters with defaults and validation, instances with ids and
content hashes, and one scoring function per workload.

A workload turns `(params, n, seed)` into `n` instances, always the same ones for the same
inputs: instance `i` draws from its own `random.Random` seeded with the string
`"<workload>:<seed>:<i>"` (Python seeds string seeds through SHA-512, so this is stable across
runs and machines and independent of `n`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A function that counts the tokens of a text under the model's tokenizer.
CountTokens = Callable[[str], int]


def byte_count(text: str) -> int:
    """Tokens of `text` under the byte-level tokenizer: its UTF-8 length."""
    return len(text.encode("utf-8"))


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Param:
    """One workload parameter: its name, default, type and the values it accepts.

    `kind` is one of "int", "float", "str", "bool"; `choices` restricts the value to a set,
    `minimum`/`maximum` bound numbers, and `nullable` lets `None` (JSON null) through, which
    each workload documents (e.g. `depth=None` draws a depth per instance).
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False

    def allowed(self) -> str:
        """Human description of the allowed values, for error messages and listings."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind in ("int", "float"):
            lo = "-inf" if self.minimum is None else _num_text(self.minimum)
            hi = "inf" if self.maximum is None else _num_text(self.maximum)
            text = f"{'an integer' if self.kind == 'int' else 'a number'} in [{lo}, {hi}]"
        elif self.kind == "bool":
            text = "true or false"
        else:
            text = "a string"
        return text + (" or null" if self.nullable else "")

    def coerce(self, workload: str, value: Any) -> Any:
        """The validated value; ValueError naming the workload, parameter and allowed values."""
        def bad() -> ValueError:
            return ValueError(
                f"workload {workload!r}: parameter {self.name!r} must be {self.allowed()}, got {value!r}"
            )

        if value is None:
            if self.nullable:
                return None
            raise bad()
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise bad()
        if self.kind == "int":
            if isinstance(value, bool):
                raise bad()
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, str):
                try:
                    value = int(value)
                except ValueError:
                    raise bad() from None
            if not isinstance(value, int):
                raise bad()
        elif self.kind == "float":
            if isinstance(value, bool):
                raise bad()
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise bad() from None
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise bad()
            value = float(value)
        elif self.kind == "str":
            if not isinstance(value, str):
                raise bad()
        else:  # pragma: no cover - a programming error in a workload definition
            raise TypeError(f"unknown parameter kind {self.kind!r}")
        if self.choices is not None and value not in self.choices:
            raise bad()
        if self.minimum is not None and value < self.minimum:
            raise bad()
        if self.maximum is not None and value > self.maximum:
            raise bad()
        return value

    def describe(self) -> dict:
        return {"name": self.name, "type": self.kind, "default": self.default,
                "allowed": self.allowed(), "help": self.help}


CHAT_MODES = ("off", "on")


def chat_param() -> Param:
    """The `chat` parameter of the generation workloads (kvpress's handling of instruct models)."""
    return Param("chat", "str", "off",
                 "on: the model's chat template wraps the prompt as one user turn (context and question) "
                 "and the answer prefix starts the assistant turn, as kvpress does for instruct models "
                 "(needs a Hugging Face tokenizer with a chat template; context_length counts the prompt "
                 "text, the template adds its own tokens)", choices=CHAT_MODES)


def chat_parts(user: str, assistant_prefix: str) -> dict:
    """`Instance.meta["chat"]`: the user turn and the start of the assistant turn; the plain prompt
    is the two joined by the separator between them (nothing, a space or a newline)."""
    return {"user": user, "assistant_prefix": assistant_prefix}


@dataclass(frozen=True)
class Instance:
    """One example of a workload: the prompt the model reads, the reference answer, and how
    many tokens the model may generate. `kind` is "generate" (generate, then score the text)
    or "nll" (score the prompt's tokens: streaming perplexity; `answer` is empty). `meta`
    carries what the scorer needs (e.g. the queried values) and what a reader wants to see
    (depth, task); with the workload parameter `chat="on"` it holds `chat` (`chat_parts`), which
    the evaluator encodes through the model's chat template instead of the plain prompt.
    `context_chars`: how many leading characters of `prompt` are the context; the rest is the
    question and the answer prefix (the chat user turn starts with the same context). The
    compression protocol "context" compresses there, before the question is appended; None: the
    instance has no such split. `content_hash` is the sha256 of everything but the id (the split is
    a function of the prompt, so it is left out and the hashes stayed what they were).
    """

    id: str
    workload: str
    prompt: str
    answer: str
    max_new_tokens: int
    kind: str = "generate"
    meta: dict = field(default_factory=dict)
    content_hash: str = ""
    context_chars: int | None = None

    def __post_init__(self) -> None:
        if not self.content_hash:
            object.__setattr__(self, "content_hash", content_hash(self))


def content_hash(inst: Instance) -> str:
    """sha256 hex of the canonical JSON of an instance's content (everything but its id)."""
    payload = {
        "workload": inst.workload, "prompt": inst.prompt, "answer": inst.answer,
        "max_new_tokens": inst.max_new_tokens, "kind": inst.kind, "meta": inst.meta,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def instance_rng(workload: str, seed: int, index: int) -> random.Random:
    """The random source of instance `index`: stable across runs, independent of n."""
    return random.Random(f"{workload}:{seed}:{index}")


class Workload:
    """Base class of a workload: a name, a parameter list, an instance maker and a scorer.

    Subclasses set `name`, `description`, `params` and implement `make(rng, params, index,
    count_tokens) -> Instance` and `score(prediction, instance) -> float` (1.0 = correct).
    `instances()` validates the parameters, then makes instance 0..n-1 from their own seeds.
    """

    name: str = ""
    description: str = ""
    params: tuple[Param, ...] = ()
    metric: str = "accuracy"
    # whether instances carry a context/question split (`Instance.context_chars`), which the
    # compression protocol "context" needs (a spec pairing "context" with a workload without it is refused)
    context_split: bool = True

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def validate(self, params: dict | None) -> dict:
        """Every parameter with its validated value (defaults filled in).

        Unknown names raise ValueError listing the allowed ones; bad values raise ValueError
        naming the parameter and its allowed values.
        """
        params = dict(params or {})
        known = {p.name for p in self.params}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"workload {self.name!r} has no parameter {unknown[0]!r}; allowed: {', '.join(sorted(known))}"
            )
        out = {p.name: p.coerce(self.name, params.get(p.name, p.default)) for p in self.params}
        self.check(out)
        return out

    def check(self, params: dict) -> None:
        """Cross-parameter checks of a subclass (e.g. queries <= pairs); raise ValueError."""

    def instances(self, params: dict | None, n: int, seed: int,
                  count_tokens: CountTokens | None = None) -> list[Instance]:
        """The n instances for (params, seed); `count_tokens` measures lengths in the model's
        tokens (default: byte-level)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_examples must be a positive integer, got {n!r}")
        p = self.validate(params)
        count = count_tokens or byte_count
        return [self.make(instance_rng(self.name, seed, i), p, i, count, seed) for i in range(n)]

    def make(self, rng: random.Random, params: dict, index: int, count_tokens: CountTokens,
             seed: int) -> Instance:
        raise NotImplementedError

    def score(self, prediction: str, instance: Instance) -> float:
        raise NotImplementedError

    def instance_id(self, seed: int, index: int) -> str:
        return f"{self.name}/s{seed}/{index}"

    def describe(self) -> dict:
        return {"name": self.name, "description": self.description, "metric": self.metric,
                "params": [p.describe() for p in self.params]}
