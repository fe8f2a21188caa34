"""Run configuration: YAML files, dotted overrides, and the errors that name the bad key."""

from __future__ import annotations

import re

import pytest

from zotune.config import ConfigError, build_config, load_config, parse_override, replace


def test_defaults_are_the_paper_settings():
    config = build_config()
    # num_val None: the task's own (zo-bench/sweeps: 500 for SST-2, 100 for COPA and
    # WinoGrande); loss None: the task's paper loss; data_seed: zo-bench/run.py train_set_seed.
    assert (config.task.num_train, config.task.num_val, config.task.num_test) == (1000, None, 1000)
    assert (config.task.loss, config.task.data_seed, config.task.template_version) == (
        None, 0, "reference"
    )
    assert config.tuning.prefix_init is None
    assert config.train.batch_size == 16
    assert config.optimizer.name == "zo-sgd"


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("optimizer.lr=1e-5", "optimizer.lr", 1e-5),
        ("optimizer.lr=0.001", "optimizer.lr", 1e-3),
        ("train.steps=20", "train.steps", 20),
        ("task.template=false", "task.template", False),
        ("model.name=random:tiny-llama", "model.name", "random:tiny-llama"),
        ("optimizer.betas=[0.9, 0.99]", "optimizer.betas", [0.9, 0.99]),
        ("optimizer.eps=", "optimizer.eps", None),
    ],
)
def test_override_values_parse_as_yaml_scalars(text, key, value):
    assert parse_override(text) == (key, value)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optimizer:\n  name: zo-adam\n  lr: 1.0e-4\ntrain:\n  steps: 50\n")
    config = load_config(path, ["optimizer.lr=2e-4", "tuning.scheme=lora"])
    assert config.optimizer.name == "zo-adam"
    assert config.optimizer.lr == 2e-4
    assert config.train.steps == 50
    assert config.tuning.scheme == "lora"


def test_ints_are_accepted_for_float_fields():
    assert build_config({"optimizer": {"lr": 1}}).optimizer.lr == 1.0


def test_replace_takes_double_underscore_keys():
    config = replace(build_config(), optimizer__lr=3e-4, task__name="copa")
    assert (config.optimizer.lr, config.task.name) == (3e-4, "copa")


def test_options_pass_only_what_was_set():
    config = build_config({"optimizer": {"name": "zo-adam", "lr": 1e-4, "eps": 1e-2}})
    assert config.optimizer.options() == {"lr": 1e-4, "eps": 1e-2}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optimiser": {}}, "unknown config section: 'optimiser'"),
        ({"optimizer": {"learning_rate": 1}}, "unknown config key: optimizer.learning_rate"),
        ({"train": {"steps": "many"}}, "train.steps: expected int, got 'many'"),
        ({"train": {"steps": None}}, "train.steps: null is not allowed"),
        ({"task": {"template": 1}}, "task.template: expected bool"),
        ({"model": []}, "model: expected a mapping"),
    ],
)
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(data)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("optimizer: [1, 2", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping of sections"),
    ],
)
def test_bad_yaml_file_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match=re.escape("config file not found: nowhere.yaml")):
        load_config("nowhere.yaml")


@pytest.mark.parametrize("text", ["optimizer.lr", "lr=1", "a.b.c=1"])
def test_malformed_overrides(text):
    with pytest.raises(ConfigError, match=re.escape("must look like section.key")):
        load_config(None, [text])
