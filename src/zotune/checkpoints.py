"""Reading a run's checkpoints back: ``last.pt`` (to resume) and ``best.pt`` (to evaluate).

A checkpoint that is empty, truncated, not a torch file, or lacks what zotune writes into it
is refused with one line naming the file, rather than an ``EOFError``, a ``KeyError`` or a
zip-reader error that does not say which file it was reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

# What ``last.pt`` holds (written by the training loop's save_checkpoint).
RESUME_KEYS = ("trainable", "optimizer", "scheduler", "step", "best_val", "best_step")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or is not what zotune wrote."""


def load_resume_checkpoint(path: Path, map_location: Any = None) -> dict[str, Any]:
    """``last.pt``: the trainable state, optimizer and scheduler state and the step counters."""
    checkpoint = _load(
        path, weights_only=False, map_location=map_location, hint="; delete it to start over"
    )
    _require_keys(path, checkpoint, RESUME_KEYS)
    _require_tensors(path, checkpoint["trainable"], "its trainable state")
    return checkpoint


def load_trainable_checkpoint(path: Path, map_location: Any = None) -> dict[str, torch.Tensor]:
    """``best.pt``: the trainable tensors by name."""
    state = _load(path, weights_only=True, map_location=map_location, hint="")
    _require_tensors(path, state, "it")
    return state


def _load(path: Path, *, weights_only: bool, map_location: Any, hint: str) -> Any:
    """``torch.load``, its failures as one line: the file, its size, torch's first sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: damaged checkpoint (an empty file){hint}")
    try:
        return torch.load(path, weights_only=weights_only, map_location=map_location)
    except Exception as error:  # torch raises EOFError, RuntimeError, UnpicklingError, ...
        text = str(error).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else "no message"
        raise CheckpointError(
            f"{path}: damaged checkpoint ({size} bytes; {type(error).__name__}: {reason}){hint}"
        ) from None


def _require_keys(path: Path, checkpoint: Any, keys: Iterable[str]) -> None:
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: not a zotune checkpoint (holds a {type(checkpoint)})")
    missing = [key for key in keys if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path}: not a zotune checkpoint (lacks {', '.join(map(repr, missing))})"
        )


def _require_tensors(path: Path, state: Any, what: str) -> None:
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: damaged checkpoint ({what} holds no tensors)")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: damaged checkpoint ({what} holds a {type(value).__name__} "
                f"for {name!r}, not a tensor)"
            )
