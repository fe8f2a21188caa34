"""The tuning-scheme registry: the built-in entries' facts, as every reader sees them, and the
refusals of :func:`zotune.tuning.register`."""

from __future__ import annotations

import pytest

from zotune.config import ConfigError, build_config
from zotune.optim import Option
from zotune.optim.registry import entry
from zotune.tuning import SchemeEntry, get_scheme, register, scheme_keys, unregister
from zotune.tuning.registry import foreign_option, mergeable


def keep(model, options, tokenizer):
    return model


@pytest.mark.parametrize(
    ("scheme", "eps", "adapter"),
    [
        ("full", 1e-3, False),
        ("lora", 1e-2, True),
        ("prefix", 1e-1, True),
        ("prompt", 1e-3, True),
        ("head", 1e-3, False),
    ],
)
def test_builtin_schemes_reach_the_optimizers_run_defaults(scheme, eps, adapter):
    assert get_scheme(scheme).adapter is adapter
    assert entry("zo-sgd").run_defaults(scheme)["eps"] == eps
    assert entry("subzero").run_defaults(scheme)["subzero_square"] is adapter
    assert "eps" not in entry("fo-adam").run_defaults(scheme)


def test_builtins_in_order_and_lora_alone_merges():
    assert scheme_keys() == ("full", "lora", "prefix", "prompt", "head")
    assert scheme_keys(adapter=True) == ("lora", "prefix", "prompt")
    assert mergeable() == ("LoRA",)


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (SchemeEntry("lora", "again", keep), "tuning scheme 'lora' is already registered"),
        (SchemeEntry("big-lora", "r 64", keep, options=(Option("lora_r", 64, "rank", kind=int),)),
         "option 'lora_r' is declared differently by lora; reuse its declaration"),
        (SchemeEntry("odd", "odd", keep, options=(Option("scheme", "x", "x", kind=str),)),
         "'scheme' is the tuning section's own key"),
    ],
)
def test_register_refuses(scheme, message):
    with pytest.raises(ValueError, match=message):
        register(scheme)
    assert scheme_keys()[-1] == "head"


def test_only_adapters_merge_or_add_loading_lines():
    with pytest.raises(ValueError, match="only an adapter scheme can be merged"):
        SchemeEntry("x", "x", keep, merge=lambda model: model)
    with pytest.raises(ValueError, match="loading notes are for adapters"):
        SchemeEntry("x", "x", keep, loading_note="why")


def test_a_shared_option_belongs_to_every_scheme_that_takes_it():
    lora_r = get_scheme("lora").option("lora_r")
    register(SchemeEntry("dora", "weight-decomposed LoRA", keep, options=(lora_r,)))
    try:
        assert foreign_option("dora", {"lora_r": 4}) is None
        assert foreign_option("full", {"lora_r": 4}) == (
            "tuning.lora_r=4 applies to lora, dora tuning, not to tuning.scheme='full'"
        )
    finally:
        unregister("dora")


@pytest.mark.parametrize(
    ("tuning", "message"),
    [
        ({"lora_r": 0}, r"tuning: invalid lora_r: 0 \(must be an int >= 1\)"),
        ({"lora_dropout": 1}, r"tuning: invalid lora_dropout: 1.0 \(must be in \[0, 1\)\)"),
        ({"prefix_init": "zeros"}, r"unknown prefix_init 'zeros' \(choose from real, random\)"),
        ({"prefix_tokens": None}, "tuning.prefix_tokens: null is not allowed"),
        ({"lora_rank": 4}, "unknown config key: tuning.lora_rank"),
    ],
)
def test_the_config_checks_each_option_against_its_declaration(tuning, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"tuning": tuning})


def test_options_at_their_defaults_are_not_settings():
    config = build_config({"tuning": {"scheme": "lora", "lora_r": 8, "lora_alpha": 32}})
    assert config.tuning.settings == {"lora_alpha": 32}
    assert (config.tuning.lora_r, config.tuning.prompt_tokens) == (8, 10)
    with pytest.raises(AttributeError, match="TuningConfig has no key 'lora_rank'"):
        config.tuning.lora_rank  # noqa: B018
