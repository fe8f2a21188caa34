r"""What a training step minimises: the task loss, or minus the reported metric on the batch.

``train.objective`` (``--objective``):

* ``loss``: the scorer's training loss (ce / lm), differentiable;
* ``accuracy``: ``f(θ) = −(1/N) Σ_n 1[argmax_i s_i(θ) ∈ correct_n]`` on the step's batch;
* ``f1``: ``f(θ) = −(1/N) Σ_n F1(greedy answer_n(θ), golds_n)`` (each probe decodes anew).

Neither metric has a gradient, so only zeroth-order optimizers can climb it: a two-point
estimate ``(f(θ + εz) − f(θ − εz)) / 2ε · z`` needs only values, and with ``f`` the metric
the run climbs what is reported rather than a surrogate (MeZO's ``--non_diff``,
``large_models/trainer.py::zo_forward_nondiff``, which takes ``−F1`` of greedy answers on
SQuAD). A first-order optimizer, and Forward-Grad (forward-mode autodiff), refuse it by name.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

from ..evaluation.evaluate import per_example
from ..evaluation.scoring import Scorer
from ..tasks.example import Example
from .micro_batches import batch_loss

OBJECTIVES = ("loss", "accuracy", "f1")
# What each metric objective needs the task's metric to be.
METRIC_OBJECTIVES = {"accuracy": ("accuracy",), "f1": ("squad_f1", "drop_f1")}


def check_objective(objective: str, *, metric: str, optimizer: str, gradient_free: bool) -> str:
    """The one-line reason ``objective`` cannot train this task with this optimizer, or ""."""
    if objective not in OBJECTIVES:
        return f"train.objective: unknown objective {objective!r} (choose from {OBJECTIVES})"
    if objective == "loss":
        return ""
    if not gradient_free:
        return (
            f"train.objective={objective!r} has no gradient; {optimizer} needs one (use a "
            "zeroth-order optimizer such as zo-sgd, or train.objective=loss)"
        )
    if metric not in METRIC_OBJECTIVES[objective]:
        return (
            f"train.objective={objective!r} does not measure this task (its metric is "
            f"{metric}): use {'f1' if objective == 'accuracy' else 'accuracy'} or loss"
        )
    return ""


def closure_for(
    objective: str,
    scorer: Scorer,
    examples: Sequence[Example],
    *,
    metric: str,
    max_new_tokens: int,
    batch_size: int,
    micro_batch_size: int | None = None,
) -> Callable[[], torch.Tensor]:
    """The step's closure: the task loss of the batch (over micro-batches when
    ``micro_batch_size`` is smaller, see :mod:`zotune.training.micro_batches`), or −metric on
    ``examples``."""
    if objective == "loss":
        return batch_loss(scorer, examples, micro_batch_size)

    def negative_metric() -> torch.Tensor:
        scores = per_example(
            scorer, examples, metric=metric, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        return torch.tensor(-statistics.fmean(s[0] for s in scores))

    return negative_metric
