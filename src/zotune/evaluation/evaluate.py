"""A split's score under its task's metric: accuracy of the ranked candidates, or F1 and EM
of greedy answers (:mod:`zotune.evaluation.generation`, :mod:`zotune.evaluation.metrics`)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..tasks.example import Example
from .baselines import calibrated_predictions
from .generation import greedy_answers
from .metrics import answer_scores, metric_name
from .scoring import Scorer, ScoringError


@dataclass(frozen=True)
class Score:
    """``value`` is the task's main metric (``name``: accuracy or f1), a fraction in [0, 1];
    ``extra`` holds the others (``em`` for generation tasks). ``per_example`` is the main
    metric of each example (1 or 0 for accuracy, the answer's F1), whose mean is ``value``:
    it lets two runs scored on the same examples be compared pair by pair; empty where the
    score was reduced before it reached this process (sharded evaluation). ``predictions`` is
    the candidate each example was given (ranked tasks only, empty otherwise): a model that
    gives every example the same one has learned nothing of the task, whatever its accuracy."""

    name: str
    value: float
    extra: dict[str, float] = field(default_factory=dict)
    per_example: tuple[float, ...] = ()
    predictions: tuple[int, ...] = ()

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        extra = {f"{prefix}{name}": value for name, value in self.extra.items()}
        return {f"{prefix}{self.name}": self.value, **extra}


def answers(
    scorer: Scorer, examples: Sequence[Example], *, max_new_tokens: int, batch_size: int
) -> list[str]:
    """The greedy answers of generation examples (their first context is the prompt)."""
    return greedy_answers(
        scorer.model,
        scorer.tokenizer,
        [example.contexts[0] for example in examples],
        max_new_tokens=max_new_tokens,
        max_length=scorer.max_length,
        batch_size=batch_size,
    )


def per_example(
    scorer: Scorer,
    examples: Sequence[Example],
    *,
    metric: str,
    max_new_tokens: int,
    batch_size: int,
    calibrate: bool = False,
    progress=None,
) -> list[tuple[float, float]]:
    """(main metric, EM) of each example: (F1, EM) of its answer, or (correct, correct)."""
    if not examples:
        raise ScoringError("cannot score an empty split")
    if metric == "accuracy":
        predictions = ranked_predictions(scorer, examples, batch_size, calibrate, progress)
        hits = [float(ex.is_correct(p)) for ex, p in zip(examples, predictions, strict=True)]
        return [(hit, hit) for hit in hits]
    decoded = answers(scorer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [
        answer_scores(metric, text, ex.answers)
        for ex, text in zip(examples, decoded, strict=True)
    ]


def ranked_predictions(
    scorer: Scorer,
    examples: Sequence[Example],
    batch_size: int,
    calibrate: bool = False,
    progress=None,
) -> list[int]:
    """The candidate each ranked example is given: the highest-scoring one, or after
    calibration (:func:`zotune.evaluation.baselines.calibrated_predictions`)."""
    if not examples:
        raise ScoringError("cannot score an empty split")
    if calibrate:
        predictions = calibrated_predictions(scorer, examples, batch_size)
    else:
        predictions = scorer.predict(examples, batch_size, progress)
    return [int(p) for p in predictions]


def evaluate(
    scorer: Scorer,
    examples: Sequence[Example],
    *,
    metric: str,
    max_new_tokens: int,
    batch_size: int,
    calibrate: bool = False,
    progress=None,
) -> Score:
    if metric == "accuracy":
        predictions = ranked_predictions(scorer, examples, batch_size, calibrate, progress)
        each = tuple(float(ex.is_correct(p)) for ex, p in zip(examples, predictions, strict=True))
        return Score("accuracy", statistics.fmean(each), per_example=each,
                     predictions=tuple(predictions))
    scores = per_example(
        scorer,
        examples,
        metric=metric,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        calibrate=calibrate,
        progress=progress,
    )
    each = tuple(s[0] for s in scores)
    main = statistics.fmean(each)
    em = statistics.fmean(s[1] for s in scores)
    return Score(metric_name(metric), main, {"em": em}, per_example=each)
