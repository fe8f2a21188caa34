r"""The baselines beside fine-tuning (MeZO's ``large_models/run.py`` with ``--trainer none``):
in-context demonstrations and surface-form calibration.

ICL (``task.demos`` = K, ``--demos K``; MeZO's ``--num_train K`` for ICL): the first K
examples of the training split (a seeded draw with the data seed, never from the evaluated
split; a smaller draw is a prefix of a larger one, so these are the K MeZO's
``sample_train_sets`` draws with the same seed) are written as their gold verbalizations,
each stripped, joined by a blank line (``Dataset.train_sep = "\n\n"``), and put before every
evaluated prompt: ``demos + "\n\n" + prompt`` (``large_models/utils.py::encode_prompt``:
``(train_prompts + train_sep + eval_prompt).lstrip().strip(' ')``). Contexts that no longer
fit are cut from the left, as every context is.

Calibration (``task.calibrate``, ``--calibrate``; MeZO's ``--sfc``, surface-form
competition, Holtzman et al. 2021): candidate i scores
``Σ_t log p(cand_i | input) − Σ_t log p(cand_i | calibration prompt)``, the calibration
prompt being the task's prompt with the input removed (``encode_sfc`` / ``verbalize_sfc``,
written beside each task in :mod:`zotune.tasks.templates`), without demonstrations; both are
sums over the candidate's tokens (``run.py::one_step_pred``). Generation tasks and tasks
without a calibration prompt refuse it by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..tasks.example import Example
from .scoring import Scorer, ScoringError

TRAIN_SEPARATOR = "\n\n"  # MeZO large_models/tasks.py: Dataset.train_sep


def demonstration_text(demonstrations: Sequence[Example]) -> str:
    """The gold verbalization of each demonstration, stripped, joined by a blank line."""
    texts = [
        (example.contexts[example.label] + example.continuations[example.label]).strip()
        for example in demonstrations
    ]
    return TRAIN_SEPARATOR.join(texts).strip()


def with_demonstrations(examples: Sequence[Example], demonstrations: Sequence[Example]):
    """``examples`` with the demonstrations before each of their contexts."""
    if not demonstrations:
        return list(examples)
    text = demonstration_text(demonstrations)
    return [
        replace(
            example,
            contexts=tuple(
                (text + TRAIN_SEPARATOR + context).lstrip().strip(" ")
                for context in example.contexts
            ),
        )
        for example in examples
    ]


def check_calibration(examples: Sequence[Example], task: str) -> None:
    for example in examples:
        if example.generation:
            raise ScoringError(f"--calibrate scores candidates; {task} generates its answers")
        if example.calibration is None:
            raise ScoringError(
                f"--calibrate: {task} has no calibration prompt (MeZO's encode_sfc) to score "
                "the candidates without their input"
            )


@torch.no_grad()
def calibrated_predictions(
    scorer: Scorer, examples: Sequence[Example], batch_size: int
) -> torch.Tensor:
    """argmax_i [Σ log p(cand_i | input) − Σ log p(cand_i | calibration prompt)]."""
    summed = Scorer(
        scorer.model,
        scorer.tokenizer,
        kind=scorer.kind,
        reduction="sum",
        max_length=scorer.max_length,
    )
    predictions = torch.zeros(len(examples), dtype=torch.long)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        for offset, example in enumerate(chunk):
            contexts, continuations = example.calibration
            bare = Example(contexts, continuations, example.label)
            scores = summed.scores(summed.encode([example])) - summed.scores(summed.encode([bare]))
            predictions[start + offset] = int(scores.argmax(-1))
    return predictions
