"""Each option declared once, validated once, handed through to the optimizer (issue 32)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from zotune import finetune
from zotune.config import ConfigError
from zotune.optim import OptimizerEntry, Option, ZOOptions, create_optimizer, rules
from zotune.optim.options import ZO_OPTIONS, finite_above
from zotune.optim.registry import REGISTRY
from zotune.training.run import resolve_config


def test_the_shared_options_type_is_generated_from_their_declarations():
    fields = dataclasses.fields(ZOOptions)
    assert [f.name for f in fields] == [o.name for o in ZO_OPTIONS]
    assert [f.default for f in fields] == [o.default for o in ZO_OPTIONS]


class Scale(rules.Transform):
    """u = s·g, s = group["scale"], declared here rather than by the entry."""

    hyperparameters = (
        Option("scale", 1.0, "multiply the estimate", check=finite_above(0),
               problem="a finite number > 0", hyperparameter=True),
    )

    def __call__(self, u, state, ctx):
        return u * ctx.group["scale"]


@pytest.mark.parametrize(
    ("unsupported", "offered"),
    [((), {"scale", "weight_decay"}), (("weight_decay",), {"scale"})],
)
def test_a_rule_s_declared_hyperparameters_are_the_entry_s_options(unsupported, offered):
    spec = OptimizerEntry(
        key="zo-scale", summary="scaled ZO-SGD", estimator="rge",
        rule=lambda options: rules.Rule(Scale(), rules.DecoupledWeightDecay()),
        unsupported=unsupported,
    )
    accepted = spec.accepted()
    assert {"scale", "weight_decay"} & set(accepted) == offered
    optimizer = spec.build([torch.zeros(3, requires_grad=True)],
                           spec.resolve({"lr": 0.1, "scale": 2.0}))
    assert {k for k in optimizer.param_groups[0] if k in ("scale", "weight_decay")} == offered
    with pytest.raises(ValueError, match=r"^Invalid scale: -1.0 \(must be a finite number > 0\)$"):
        spec.resolve({"lr": 0.1, "scale": -1.0})


@pytest.mark.parametrize(
    ("key", "variant_options"),
    [("zo-sgd-sign", {"betas", "adam_eps"}), ("zo-sgd-cons", {"betas", "adam_eps"}),
     ("fo-sgd", {"momentum", "dampening", "nesterov"})],
)
def test_options_of_every_rule_an_entry_builds_are_taken(key, variant_options):
    """ZO-SGD-Sign's AdamW rule is built only with base='adamw'; its options are there anyway."""
    assert variant_options <= set(REGISTRY[key].accepted())


def count_validations(monkeypatch) -> list[str]:
    """The names of the options validated from now on, in order (Option.validate counted)."""
    checked: list[str] = []
    validate = Option.validate

    def counting(self, value):
        checked.append(self.name)
        return validate(self, value)

    monkeypatch.setattr(Option, "validate", counting)
    return checked


@pytest.mark.parametrize("key", ["zo-sgd", "forward-grad", "fo-adam", "lozo"])
def test_create_optimizer_checks_each_value_once(key, monkeypatch):
    checked = count_validations(monkeypatch)
    create_optimizer(key, torch.nn.Linear(3, 2), lr=1e-3)
    assert len(checked) == len(set(checked)) == len(REGISTRY[key].accepted())


def test_a_training_run_checks_each_value_once(sst2_dir, monkeypatch):
    """finetune resolves the options before loading anything and builds the optimizer from
    that one resolution: following --eps from the config to the step checks it once."""
    checked = count_validations(monkeypatch)
    finetune({"model": {"name": "random:tiny-opt"},
              "task": {"name": "sst2", "data_dir": str(sst2_dir), "num_train": 16,
                       "num_val": 4, "num_test": 4},
              "optimizer": {"name": "zo-sgd", "lr": 1e-3, "eps": 1e-2},
              "train": {"steps": 1, "batch_size": 4, "eval_every": 1, "progress": False}})
    assert len(checked) == len(set(checked)) == len(REGISTRY["zo-sgd"].accepted())


def test_the_resolved_options_reach_the_estimator_and_the_optimizer():
    optimizer = create_optimizer("zo-sgd", torch.nn.Linear(3, 2), lr=1e-3, eps=0.05, seed=7,
                                 stochastic_rounding=False)
    assert optimizer.estimator.eps == 0.05 and optimizer.seed == 7
    assert optimizer.stochastic_rounding is False


@pytest.mark.parametrize(
    ("estimator", "options", "message"),
    [
        ({"eps": 1e-2}, {"eps": 1e-3}, "the estimator's eps is 0.01 but options.eps is 0.001"),
        ({"q": 4}, {}, "the estimator's q is 4 but options.q is 1"),
        ({"probe": "one-point"}, {}, "the estimator's probe is 'one-point'"),
        ({"eps": 1e-2}, {"eps": 1e-2}, None),
        ({"eps": 1e-2}, None, None),  # no options given: the estimator is the only source
    ],
)
def test_options_and_a_hand_built_estimator_must_agree(estimator, options, message):
    """ε, q and the probe live in the estimator that runs and in the options a run records:
    a hand-built pair that disagrees would run one ε and report another."""
    from zotune.estimators import RandomGradientEstimator
    from zotune.optim import ZerothOrderOptimizer

    def build():
        return ZerothOrderOptimizer(
            torch.nn.Linear(3, 2).parameters(), 1e-3, rule=rules.sgd(),
            estimator=RandomGradientEstimator(**estimator),
            options=None if options is None else ZOOptions(**options))

    if message is None:
        assert build().estimator.eps == estimator["eps"]
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build()


def test_forward_grad_s_estimator_is_checked_on_what_it_holds():
    """Forward-Grad's estimator has no ε or probe (no finite difference): only q is compared."""
    from zotune.estimators import ForwardGradientEstimator
    from zotune.optim import ZerothOrderOptimizer

    ZerothOrderOptimizer(torch.nn.Linear(3, 2).parameters(), 1e-3, rule=rules.sgd(),
                         estimator=ForwardGradientEstimator(q=2), options=ZOOptions(q=2,
                                                                                    eps=5e-2))
    with pytest.raises(ValueError, match=r"the estimator's q is 2 but options\.q is 1"):
        ZerothOrderOptimizer(torch.nn.Linear(3, 2).parameters(), 1e-3, rule=rules.sgd(),
                             estimator=ForwardGradientEstimator(q=2), options=ZOOptions())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"optimizer__eps": 0.0}, "optimizer: Invalid perturbation scale eps: 0.0"),
     ({"optimizer_eps": 0.1}, "override key must look like section.key, got 'optimizer_eps'")],
)
def test_finetune_overrides_go_through_the_config_s_parser(overrides, message):
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        resolve_config(None, **overrides)


def test_run_defaults_are_written_once_and_set_values_win():
    config = resolve_config({"tuning": {"scheme": "lora"}})
    assert config.optimizer.eps == 1e-2
    assert resolve_config({"tuning": {"scheme": "lora"}}, optimizer__eps=3e-3).optimizer.eps == 3e-3
