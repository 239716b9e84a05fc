"""Does a model match the asked key in niah_multikey, or copy some needle's value?

For each number of needles, greedy generation on `--n` examples (depths spread over [0, 1]) with
the full forward rerun per token (`nats_model.train.quick_eval.greedy_generate`, no cache policy):
exact-match accuracy, and how many wrong answers are another needle's value exactly (the model
copies a whole value but picks the wrong key). Chance for a model that copies a random needle is
1 / num_keys. Human table first; the last line is one JSON object.

    .venv/bin/python scripts/diagnose_niah.py models/tiny-base --context-length 512 --keys 1,2,4
"""

from __future__ import annotations

import argparse
import json
import random
import re

import torch

from nats_model.data.tasks import make_example
from nats_model.models.gpt import GPT
from nats_model.train.quick_eval import greedy_generate


def diagnose(model: GPT, context_length: int, keys: list[int], n: int, seed: int) -> list[dict]:
    rows = []
    for num_keys in keys:
        rng = random.Random(seed)
        right = wrong_key = 0
        for i in range(n):
            prompt, answer = make_example("niah_multikey", rng, context_length=context_length,
                                          depth=i / max(1, n - 1), num_keys=num_keys)
            out, _ = greedy_generate(model, torch.tensor([list(prompt.encode("utf-8"))]), len(answer) + 2)
            text = bytes(out[0].tolist()).decode("utf-8", errors="replace").split("\n")[0].strip()
            values = re.findall(r"The number for . is (\d+)\.", prompt)
            right += text == answer
            wrong_key += text != answer and text in values
        rows.append({"num_keys": num_keys, "n": n, "accuracy": right / n, "wrong_key_copies": wrong_key,
                     "chance": 1 / num_keys})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a GPT checkpoint folder (models/<name> or a training output)")
    ap.add_argument("--context-length", type=int, default=512)
    ap.add_argument("--keys", default="1,2,4", help="numbers of needles, comma-separated")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = GPT.from_pretrained(args.model).eval()
    rows = diagnose(model, args.context_length, [int(k) for k in args.keys.split(",")], args.n, args.seed)
    print(f"niah_multikey at {args.context_length} tokens, {args.model}")
    print(f"{'keys':>5}{'accuracy':>10}{'wrong-key copies':>18}{'chance':>8}")
    for r in rows:
        print(f"{r['num_keys']:>5}{r['accuracy']:>10.3f}{r['wrong_key_copies']:>18}{r['chance']:>8.2f}")
    print(json.dumps({"model": args.model, "context_length": args.context_length, "rows": rows}))


if __name__ == "__main__":
    main()
