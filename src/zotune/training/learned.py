"""Whether a run learned anything, and if not, the one-line hint that fits.

A run learned nothing when

* the checkpoint it keeps (best on validation, ties to the earlier step) is step 0, the
  initial model: validation never rose above where it started, either because it never
  moved (steps too small, or too few) or because it only fell (steps too large); or
* the kept model gives every test example the same candidate (a constant predictor): its
  accuracy is that candidate's share of the test set, whatever the task asks.

:func:`untrained_reason` says which, with what to try; the run's summary, ``result.json``
(``untrained``), ``zotune export`` (refused unless ``--allow-untrained``) and the exported
model card carry the line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

# The recipe that learns on the embedded model within a user's patience (README, "The demo").
LEARNING_RECIPE = "--tuning full --optimizer zo-sgd --lr 3e-5 --dtype bfloat16"


def constant_prediction(predicted: Sequence[int]) -> int | None:
    """The candidate given to every example, where there are two or more and all got it."""
    counts = Counter(predicted)
    if len(predicted) > 1 and len(counts) == 1:
        return next(iter(counts))
    return None


def untrained_reason(
    *,
    best_step: int,
    steps: int,
    val_history: Sequence[float],
    predicted: Sequence[int],
    scheme: str,
    lr: float,
    zeroth_order: bool,
) -> str | None:
    """One line saying that and why the run learned nothing, with a hint; None if it did.

    ``val_history`` is the validation metric at each evaluation, step 0's first;
    ``predicted`` the kept model's candidate for each test example (empty: not known).
    """
    if steps == 0:
        return "the run learned nothing: it took no step (train.steps is 0); set --steps"
    constant = constant_prediction(predicted)
    problems = []
    if best_step == 0:
        moved = len(set(val_history)) > 1
        start = f"{val_history[0]:.1%}" if val_history else "its start"
        plural = "s" * (steps != 1)
        if moved:
            problems.append(
                f"the kept checkpoint is step 0, the initial model: validation only fell "
                f"below its start ({start})"
            )
            hint = f"--lr {lr / 10:g} (now {lr:g})"
        else:
            problems.append(
                f"the kept checkpoint is step 0, the initial model: validation never moved "
                f"from {start} in {len(val_history)} evaluations over {steps} step{plural}"
            )
            hint = _too_little_hint(scheme, lr, steps, zeroth_order)
    elif constant is not None:
        hint = f"--lr {lr / 10:g} (now {lr:g}): the updates pushed every score one way"
    if constant is not None:
        problems.append(
            f"it gives candidate {constant} to all {len(predicted)} test examples (a constant "
            "predictor)"
        )
    if not problems:
        return None
    return f"the run learned nothing: {'; '.join(problems)}. Try {hint}."


def _too_little_hint(scheme: str, lr: float, steps: int, zeroth_order: bool) -> str:
    larger = f"--lr {lr * 10:g} (now {lr:g})"
    from ..tuning.registry import scheme_keys

    if zeroth_order and scheme in scheme_keys(adapter=True):
        return (
            f"{LEARNING_RECIPE} (the demo's recipe: ZO moves {scheme} adapters far more "
            f"slowly than the whole model), or {larger}"
        )
    return f"{larger}, or more --steps (now {steps})"


def result_reason(result: dict[str, Any]) -> str | None:
    """The reason recorded in a run's ``result.json``; for a record written before zotune
    recorded one, "learned nothing" where its kept checkpoint is step 0."""
    if "untrained" in result:
        return result["untrained"]
    if result.get("best_step") == 0:
        return "the run learned nothing: the kept checkpoint is step 0, the initial model"
    return None
