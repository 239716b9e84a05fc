"""Scoring functions shared by the workloads: exact match, per-query accuracy, string match
(RULER style) and token F1 (SQuAD / LongBench style). Each returns a float in [0, 1].
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def first_line(prediction: str) -> str:
    """The generated text up to its first newline, stripped (a model may go on after it)."""
    text = prediction.strip()
    return text.splitlines()[0].strip() if text else ""


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the first line of the prediction is the answer.

    The answer may be followed by a non-alphanumeric character (`"12345."`, `"12345 is"`), so
    a model that goes on after a correct answer is not penalised, but a longer token
    (`"123456"`) is wrong.
    """
    pred, ref = first_line(prediction), answer.strip()
    if not ref:
        raise ValueError("exact_match needs a non-empty answer")
    if pred == ref:
        return 1.0
    if pred.startswith(ref) and not pred[len(ref)].isalnum():
        return 1.0
    return 0.0


def per_query_accuracy(predictions: list[str], answers: list[str]) -> float:
    """Fraction of queries whose predicted value equals the expected one (position-wise;
    missing predictions count as wrong)."""
    if not answers:
        raise ValueError("per_query_accuracy needs at least one expected answer")
    hits = sum(1 for i, ref in enumerate(answers) if i < len(predictions) and predictions[i] == ref)
    return hits / len(answers)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, answer: str) -> float:
    """Token-level F1 between the normalised prediction and answer (bag of words)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(answer).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_token_f1(prediction: str, answers: list[str]) -> float:
    """The best token F1 over several reference answers (LongBench's rule)."""
    if not answers:
        raise ValueError("best_token_f1 needs at least one reference answer")
    return max(token_f1(prediction, a) for a in answers)


def string_match_all(prediction: str, answers: list[str]) -> float:
    """Fraction of the reference answers that occur in the prediction, case-insensitive
    (RULER's `string_match_all`)."""
    if not answers:
        raise ValueError("string_match_all needs at least one reference answer")
    pred = prediction.lower()
    return sum(1.0 for a in answers if a.lower() in pred) / len(answers)


def string_match_part(prediction: str, answers: list[str]) -> float:
    """1.0 when any reference answer occurs in the prediction (RULER's `string_match_part`)."""
    if not answers:
        raise ValueError("string_match_part needs at least one reference answer")
    pred = prediction.lower()
    return float(any(a.lower() in pred for a in answers))
