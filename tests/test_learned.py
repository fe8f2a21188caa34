"""zotune.training.learned: which runs learned nothing, and the hint each one gets."""

from __future__ import annotations

import pytest

from zotune.training.learned import constant_prediction, result_reason, untrained_reason

BASE = {"steps": 40, "scheme": "full", "lr": 1e-4, "zeroth_order": True}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({"best_step": 20, "val_history": [0.5, 0.6, 0.55], "predicted": [0, 1, 1]}, None),
        ({"best_step": 0, "val_history": [0.48, 0.48, 0.48], "predicted": [0, 1]},
         "validation never moved from 48.0% in 3 evaluations over 40 steps. Try --lr 0.001 "
         "(now 0.0001), or more --steps (now 40)."),
        ({"best_step": 0, "val_history": [0.48, 0.48], "predicted": [0, 1], "scheme": "lora"},
         "Try --tuning full --optimizer zo-sgd --lr 3e-5 --dtype bfloat16 (the demo's recipe"),
        ({"best_step": 0, "val_history": [0.48, 0.48], "predicted": [0, 1], "scheme": "lora",
          "zeroth_order": False}, "Try --lr 0.001 (now 0.0001), or more --steps"),
        ({"best_step": 0, "val_history": [0.6, 0.5, 0.4], "predicted": [0, 1]},
         "validation only fell below its start (60.0%). Try --lr 1e-05 (now 0.0001)."),
        ({"best_step": 20, "val_history": [0.4, 0.5], "predicted": [1, 1, 1]},
         "it gives candidate 1 to all 3 test examples (a constant predictor). Try --lr 1e-05"),
        ({"best_step": 0, "val_history": [0.5, 0.5], "predicted": [0, 0]},
         "never moved from 50.0% in 2 evaluations over 40 steps; it gives candidate 0 to all 2 "
         "test examples (a constant predictor)"),
        ({"best_step": 0, "val_history": [0.5], "predicted": [], "steps": 0},
         "it took no step (train.steps is 0)"),
    ],
)
def test_untrained_reasons_and_hints(case, expected):
    reason = untrained_reason(**{**BASE, **case})
    if expected is None:
        assert reason is None
    else:
        assert reason.startswith("the run learned nothing: ") and expected in reason


@pytest.mark.parametrize(
    ("predicted", "constant"), [([], None), ([1], None), ([1, 1], 1), ([0, 1, 0], None)]
)
def test_a_constant_predictor_needs_two_examples_all_alike(predicted, constant):
    assert constant_prediction(predicted) == constant


def test_records_from_before_the_field_fall_back_on_the_kept_step():
    assert result_reason({"best_step": 5}) is None
    assert "step 0" in result_reason({"best_step": 0})
    assert result_reason({"best_step": 0, "untrained": None}) is None
