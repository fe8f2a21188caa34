"""Load a pretrained language model and its tokenizer.

:func:`load_model` takes a Hugging Face hub id or a local folder (any causal LM: OPT, LLaMA,
Vicuna, Mistral, SmolLM…, or a RoBERTa-style masked LM). Whether a model is causal or masked
is read from its config, never guessed from its name. ``None`` (or ``"smollm2-135m"``) is the
embedded default model (:mod:`zotune.models.embedded`); random models of a known shape are
built by :mod:`zotune.models.random_shapes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from .anatomy import auto_class, config_kind
from .embedded import EMBEDDED_MODEL, embedded_model_folder
from .errors import ModelError
from .placement import place_on_devices

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class LoadedModel:
    """A model with its tokenizer. ``kind`` is ``"causal"`` or ``"masked"``."""

    model: torch.nn.Module
    tokenizer: Any
    name: str
    kind: str


# Argument checks ---------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ModelError(f"unknown device {device!r} (choose from cpu, cuda, cuda:N, auto)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    return torch.device(text)


# Pretrained models -------------------------------------------------------------------------


def load_model(
    name: str | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    attn_implementation: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a pretrained LM and its tokenizer, in eval mode.

    ``device_map`` (instead of ``device``) spreads the layers over devices through
    accelerate, as :func:`place_on_devices` describes.

    ``name`` is a hub id, a local model folder, or ``None`` / ``"smollm2-135m"`` for the
    embedded model. ``cache_dir`` (else ``$ZOTUNE_CACHE_DIR``, else ``~/.cache/zotune``) holds
    the embedded model's de-quantized copy; hub downloads use the usual Hugging Face cache.
    The tokenizer pads on the left (the scorer relies on it) and pads with EOS if it has no
    pad token of its own.
    """
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    if name is None or name == EMBEDDED_MODEL:
        source, display = str(embedded_model_folder(cache_dir)), EMBEDDED_MODEL
    else:
        source, display = _check_source(name), name
    try:
        config = AutoConfig.from_pretrained(source)
        kind = config_kind(config)
        model = auto_class(kind).from_pretrained(
            source, config=config, dtype=torch_dtype, attn_implementation=attn_implementation
        )
        tokenizer = AutoTokenizer.from_pretrained(source)
    except ModelError:
        raise
    except OSError as error:
        raise ModelError(
            f"could not load model {name!r} (offline? not a hub id or a model folder?): "
            f"{_first_line(error)}"
        ) from error
    except ValueError as error:  # e.g. a config.json without a model type
        raise ModelError(f"could not load model {name!r}: {_first_line(error)}") from error
    if device_map is None:
        model.to(torch_device)
    else:
        place_on_devices(model, device_map, torch_device)
    model.eval()
    _prepare_tokenizer(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, name=display, kind=kind)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_source(name: str) -> str:
    """A local folder must hold a model config; anything else is treated as a hub id."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name!r} is a local path but not a model folder (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model folder {name!r} does not exist")
    return name


def _prepare_tokenizer(tokenizer) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
