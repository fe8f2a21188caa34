r"""Answer metrics of generation tasks: SQuAD's and DROP's exact match and F1.

Every metric takes the decoded prediction and the gold answers and returns the maximum over
the golds (SQuAD's ``metric_max_over_ground_truths``, MeZO ``large_models/metrics.py::f1``).

SQuAD (the official v1.1 ``evaluate-v1.1.py``, as MeZO ``large_models/metrics.py::
normalize_answer`` writes it): lower-case, drop punctuation, drop the articles a / an / the,
collapse white space; EM is equality of the normalized strings, F1 the harmonic mean of
token precision and recall over the normalized tokens as multisets (0 with no token in
common).

DROP (``drop_eval.py`` of allenai/allennlp-reading-comprehension, ``get_metrics``): an answer
is a bag of spans; each span is split at spaces and hyphens, each piece lower-cased, stripped
of punctuation unless it is a number, a number written as ``str(float(x))``, articles
dropped; a span's tokens form a set. EM: the normalized spans are equal as sets and in
count. F1: the spans of prediction and gold are aligned one to one to maximise the summed
span F1 (a span pair scores 0 when the gold span holds numbers and the predicted one none of
them), the per-span scores averaged over max(#gold, #predicted) and rounded to 2 places.
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)

# A task's metric → the name results carry, and its pair of (F1, EM) functions.
METRIC_NAMES = {"accuracy": "accuracy", "squad_f1": "f1", "drop_f1": "f1"}


def metric_name(metric: str) -> str:
    """``accuracy`` or ``f1``: the name a task's main metric is reported under."""
    try:
        return METRIC_NAMES[metric]
    except KeyError:
        raise ValueError(
            f"unknown metric {metric!r} (choose from {', '.join(METRIC_NAMES)})"
        ) from None


# SQuAD -------------------------------------------------------------------------------------


def squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(predicted: Sequence[str], gold: Sequence[str]) -> float:
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    predicted = squad_normalize(prediction).split()
    return max(_token_f1(predicted, squad_normalize(gold).split()) for gold in golds)


def squad_em(prediction: str, golds: Sequence[str]) -> float:
    predicted = squad_normalize(prediction)
    return float(any(predicted == squad_normalize(gold) for gold in golds))


# DROP --------------------------------------------------------------------------------------


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def drop_normalize(span: str) -> str:
    pieces = []
    for token in re.split(" |-", span):
        token = token.lower()
        if not _is_number(token):
            token = "".join(ch for ch in token if ch not in _PUNCTUATION)
        if _is_number(token):
            token = str(float(token))
        token = " ".join(_ARTICLES.sub(" ", token).split())
        if token.strip():
            pieces.append(token)
    return " ".join(pieces).strip()


def _bags(answer: str | Sequence[str]) -> tuple[list[str], list[set[str]]]:
    spans = [answer] if isinstance(answer, str) else list(answer)
    normalized = [drop_normalize(span) for span in spans]
    return normalized, [set(span.split()) for span in normalized]


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
    common = len(gold & predicted)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _numbers_match(gold: set[str], predicted: set[str]) -> bool:
    gold_numbers = {word for word in gold if _is_number(word)}
    return not gold_numbers or bool(gold_numbers & {w for w in predicted if _is_number(w)})


def _aligned_f1(predicted: list[set[str]], gold: list[set[str]]) -> float:
    """The mean per-span F1 under the best one-to-one alignment (drop_eval.py solves it with
    ``linear_sum_assignment``; answers hold a handful of spans, so every assignment is tried
    here, which finds the same optimum)."""
    scores = [
        [_bag_f1(p, g) if _numbers_match(g, p) else 0.0 for p in predicted] for g in gold
    ]
    small, large = sorted((len(gold), len(predicted)))
    best = 0.0
    for chosen in itertools.permutations(range(large), small):
        if len(gold) <= len(predicted):
            total = sum(scores[g][p] for g, p in enumerate(chosen))
        else:
            total = sum(scores[g][p] for p, g in enumerate(chosen))
        best = max(best, total)
    return best / max(len(gold), len(predicted))


def drop_scores(prediction: str | Sequence[str], gold: str | Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction against one gold answer, as ``drop_eval.get_metrics``."""
    predicted_spans, predicted_bags = _bags(prediction)
    gold_spans, gold_bags = _bags(gold)
    exact = float(
        set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans)
    )
    return exact, round(_aligned_f1(predicted_bags, gold_bags), 2)


def drop_f1(prediction: str, golds: Sequence[str]) -> float:
    return max(drop_scores(prediction, gold)[1] for gold in golds)


def drop_em(prediction: str, golds: Sequence[str]) -> float:
    return max(drop_scores(prediction, gold)[0] for gold in golds)


# metric → (F1, EM) of one prediction against its golds.
ANSWER_METRICS = {"squad_f1": (squad_f1, squad_em), "drop_f1": (drop_f1, drop_em)}


def answer_scores(metric: str, prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(F1, EM) of one decoded answer under a generation task's metric."""
    f1, em = ANSWER_METRICS[metric]
    return f1(prediction, golds), em(prediction, golds)
