"""Quick accuracy check of a trained GPT on one synthetic task, without a cache engine.

Greedy generation by rerunning the full forward over prompt + generated tokens (no KV cache),
batched over examples of equal prompt length. A NAtS model evaluates in eval mode: inference
types (argmax + global_bias) and the dense visibility mask of those types, which equals what the
NAtS inference cache keeps. Depths are spread evenly over [0, 1].

    python -m nats_model.train.quick_eval models/tiny-base --task passkey --n 40 --context-length 1024

The last stdout line is JSON: {task, context_length, n, accuracy, kept_fraction, seconds}.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from nats_model.data.tasks import ANSWER_END, TASKS, make_example, max_answer_tokens, parse_pairs
from nats_model.models.gpt import GPT


@torch.no_grad()
def greedy_generate(model: GPT, prompts: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, float | None]:
    """prompts (B, T) int64 -> (generated (B, max_new_tokens), kept fraction after the prompt or None),
    recomputing the full forward each step."""
    seq, kept = prompts, None
    for step in range(max_new_tokens):
        logits, _ = model(seq)  # (B, T', V)
        if step == 0:
            kept = model.kept_fraction()  # NAtS: keys the cache holds after the prompt
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompts.shape[1]:], kept


def score(task: str, generated: str, answer: str) -> float:
    """Exact match of the text before `ANSWER_END`; kv_recall: fraction of asked pairs recalled."""
    text = generated.split(ANSWER_END)[0].strip()
    if task == "kv_recall":
        want, got = parse_pairs(answer), parse_pairs(text)
        return sum(got.get(k) == v for k, v in want.items()) / len(want)
    return float(text == answer)


def evaluate(model: GPT, task: str, n: int = 20, context_length: int = 1024, seed: int = 0,
             batch_size: int = 8, params: dict | None = None) -> dict:
    """Accuracy of greedy generation on `n` examples of `task` (depths i/(n-1)) and the mean kept fraction."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    params = params or {}
    model.eval()
    rng = random.Random(seed)
    examples = [make_example(task, rng, context_length=context_length, depth=i / max(1, n - 1), **params)
                for i in range(n)]
    max_new = max_answer_tokens(task, **params) + len(ANSWER_END)
    t0 = time.time()
    scores, kept = [], []
    by_len: dict[int, list[int]] = {}
    for i, (p, _) in enumerate(examples):
        by_len.setdefault(len(p.encode("utf-8")), []).append(i)
    outputs: dict[int, str] = {}
    for idxs in by_len.values():
        for s in range(0, len(idxs), batch_size):
            chunk = idxs[s : s + batch_size]
            prompts = torch.tensor([list(examples[i][0].encode("utf-8")) for i in chunk], dtype=torch.long)
            gen, frac = greedy_generate(model, prompts, max_new)
            if frac is not None:
                kept.append(frac)
            for i, row in zip(chunk, gen.tolist(), strict=True):
                outputs[i] = bytes(row).decode("utf-8", errors="replace")
    for i, (_, answer) in enumerate(examples):
        scores.append(score(task, outputs[i], answer))
    return {"task": task, "context_length": context_length, "n": n, "accuracy": sum(scores) / n,
            "kept_fraction": sum(kept) / len(kept) if kept else 1.0, "seconds": round(time.time() - t0, 2),
            "failures": [{"answer": examples[i][1], "generated": outputs[i]} for i in range(n) if scores[i] < 1][:5]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="checkpoint folder (model.safetensors + config.json)")
    ap.add_argument("--task", default="passkey", choices=sorted(TASKS))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--context-length", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--param", action="append", default=[], metavar="K=V", help="task parameter (int values)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {}
    for kv in args.param:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--param must be K=V, got {kv!r}")
        params[k] = int(v) if v.lstrip("-").isdigit() else v
    model = GPT.from_pretrained(args.model)
    result = evaluate(model, args.task, args.n, args.context_length, args.seed, args.batch_size, params)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
