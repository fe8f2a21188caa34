"""fp32 weights with half-precision compute (``model.autocast``), and its refusals."""

from __future__ import annotations

import pytest
import torch

from zotune.models.mixed_precision import (
    AutocastError,
    check_autocast,
    compute_context,
    under_autocast,
)
from zotune.profiling.command import parse_precision


@pytest.mark.parametrize(
    ("autocast", "dtype", "message"),
    [
        ("bf16", "float32", "unknown dtype 'bf16'"),
        ("bfloat16", "bfloat16", r"needs model\.dtype=float32"),
        ("float16", "float16", r"needs model\.dtype=float32"),
    ],
)
def test_bad_autocast_settings_are_refused_by_name(autocast, dtype, message):
    with pytest.raises(AutocastError, match=message):
        check_autocast(autocast, dtype)


@pytest.mark.parametrize(("autocast", "dtype"), [(None, "bfloat16"), ("bfloat16", "float32")])
def test_good_autocast_settings_pass(autocast, dtype):
    check_autocast(autocast, dtype)


@pytest.mark.parametrize(
    ("autocast", "expected"), [(None, torch.float32), ("bfloat16", torch.bfloat16)]
)
def test_forward_computes_in_the_autocast_dtype(autocast, expected):
    layer = torch.nn.Linear(4, 4)
    out = under_autocast(layer, autocast, "cpu")(torch.ones(2, 4))
    assert out.dtype == expected
    assert layer.weight.dtype == torch.float32
    with compute_context(autocast, "cpu"):
        assert layer(torch.ones(2, 4)).dtype == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("float32", ("float32", None)),
        ("bfloat16", ("bfloat16", None)),
        ("autocast-bfloat16", ("float32", "bfloat16")),
    ],
)
def test_profile_precisions(text, expected):
    assert parse_precision(text) == expected


def test_profile_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        parse_precision("bf16")


@pytest.mark.parametrize("name", ["zo-sgd", "forward-grad", "fo-sgd"])
def test_finetune_under_autocast(sst2_dir, name):
    from zotune.training.train import finetune

    result = finetune(
        {
            "model": {"name": "random:tiny-llama", "autocast": "bfloat16"},
            "task": {"name": "sst2", "data_dir": str(sst2_dir), "num_train": 8, "num_val": 4,
                     "num_test": 4},
            "optimizer": {"name": name, "lr": 1e-3},
            "train": {"steps": 2, "batch_size": 2, "eval_every": 2, "progress": False},
        }
    )
    assert result.steps == 2 and result.skipped_steps == 0


def test_finetune_refuses_autocast_over_bf16_weights(sst2_dir):
    from zotune.config import ConfigError
    from zotune.training.train import finetune

    with pytest.raises((ConfigError, AutocastError), match=r"needs model\.dtype=float32"):
        finetune({"model": {"name": "random:tiny-llama", "dtype": "bfloat16",
                            "autocast": "bfloat16"},
                  "task": {"name": "sst2", "data_dir": str(sst2_dir)}})


def test_stochastic_rounding_option_is_refused_for_first_order(sst2_dir):
    from zotune.config import ConfigError
    from zotune.training.train import finetune

    with pytest.raises(ConfigError, match="stochastic_rounding does not apply to fo-sgd"):
        finetune({"model": {"name": "random:tiny-llama"},
                  "task": {"name": "sst2", "data_dir": str(sst2_dir)},
                  "optimizer": {"name": "fo-sgd", "stochastic_rounding": False}})
