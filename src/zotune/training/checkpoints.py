"""A run's checkpoints: the best on validation and the last, in a run folder or in memory.

With an output folder, ``best.pt`` holds the trainable tensors of the best validation step
and ``last.pt`` everything a resumed run needs (trainable tensors, optimizer and scheduler
state with the seed stream, the step, the best so far); only the main process of a
distributed run writes them, every process reads them back. Without a folder the best state
is a copy in memory. With a folder the best state lives only on disk: a copy in memory would
double the footprint of full tuning, which ZO exists to keep at inference size.

A checkpoint that is empty, truncated, not a torch file, or lacks what zotune writes into it
is refused with one line naming the file, rather than an ``EOFError``, a ``KeyError`` or a
zip-reader error that does not say which file it was reading.

Both files are data (run folders are shared and cloned): they are read with
``weights_only=True``, so a pickle that would build any object but tensors and plain values
(numbers, strings, lists, dicts) is refused, naming the file, and nothing in it runs. What
``last.pt`` holds (optimizer and scheduler state, the seed stream) is made of such values,
as it was in zotune 0.2, whose checkpoints therefore still resume.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..models.offload import named_resident_parameters
from ..utils.files import atomic_write, disk_full_message

BEST_FILE = "best.pt"
LAST_FILE = "last.pt"

# What ``last.pt`` holds (written by Checkpoints.save_last).
RESUME_KEYS = ("trainable", "optimizer", "scheduler", "step", "best_val", "best_step")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or is not what zotune wrote."""


def load_resume_checkpoint(path: Path, map_location: Any = None) -> dict[str, Any]:
    """``last.pt``: the trainable state, optimizer and scheduler state and the step counters."""
    checkpoint = _load(path, map_location=map_location, hint="; delete it to start over")
    _require_keys(path, checkpoint, RESUME_KEYS)
    _require_tensors(path, checkpoint["trainable"], "its trainable state")
    return checkpoint


def checkpoint_step(path: Path) -> int | None:
    """The step ``last.pt`` was written at, read without loading its tensors (memory-mapped);
    None without a ``last.pt``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        step = torch.load(path, weights_only=True, mmap=True, map_location="cpu").get("step")
    except Exception:  # damaged: load_resume_checkpoint names it when the run resumes
        return None
    return step if isinstance(step, int) else None


def data_digest(splits: Iterable[Iterable[Any]]) -> str:
    """A digest of the examples a run trains, validates and tests on: a resume that would
    read other data (another ``task.data_dir``, an edited file) is refused by it."""
    digest = hashlib.sha256()
    for examples in splits:
        for example in examples:
            digest.update(repr(example).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def load_trainable_checkpoint(path: Path, map_location: Any = None) -> dict[str, torch.Tensor]:
    """``best.pt``: the trainable tensors by name."""
    state = _load(path, map_location=map_location, hint="")
    _require_tensors(path, state, "it")
    return state


def _load(path: Path, *, map_location: Any, hint: str) -> Any:
    """``torch.load`` of tensors and plain values only, its failures as one line: the file,
    its size, torch's first sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: damaged checkpoint (an empty file){hint}")
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error):
            raise CheckpointError(_damaged(path, size, error, hint)) from None
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain values, which "
            f"zotune never writes; loading it could run code from it{hint}"
        ) from None
    except Exception as error:  # torch raises EOFError, RuntimeError, ...
        raise CheckpointError(_damaged(path, size, error, hint)) from None


def _damaged(path: Path, size: int, error: Exception, hint: str) -> str:
    text = str(error).strip()
    reason = text.splitlines()[0].split(". ")[0] if text else "no message"
    return f"{path}: damaged checkpoint ({size} bytes; {type(error).__name__}: {reason}){hint}"


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



def _save(path: Path, value: Any) -> None:
    """``torch.save`` into place atomically; a full disk is named as such (the file it
    would have replaced is kept)."""
    try:
        atomic_write(path, lambda p: torch.save(value, p))
    except (OSError, RuntimeError) as error:
        message = disk_full_message(error, path)
        if message is None:
            raise
        raise CheckpointError(f"{message}; the previous checkpoint is kept") from None


def trainable_state(model: torch.nn.Module, copy: bool = True) -> dict[str, torch.Tensor]:
    """The trainable tensors by name; ``copy=False`` gives views for saving without a copy."""
    return {
        n: p.detach().clone() if copy else p.detach()
        for n, p in named_resident_parameters(model)
        if p.requires_grad
    }


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(named_resident_parameters(model))
    missing = [n for n in state if n not in params]
    if missing:
        raise ConfigError(f"checkpoint holds tensors this model lacks, e.g. {missing[0]!r}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


@dataclass
class Resumed:
    """Where a resumed run picks up."""

    step: int
    test_accuracy_before: float | None
    train_seconds: float  # the training loop's wall time before the interruption


class Checkpoints:
    """Best-on-validation and last checkpoints of one run.

    ``folder`` is the run folder (None: best in memory, no last); ``writes`` is False in the
    processes of a distributed run that only read.
    """

    def __init__(self, model: torch.nn.Module, folder: Path | None, writes: bool = True,
                 data: str | None = None) -> None:
        self.model = model
        self.data = data  # data_digest of the run's splits
        self.folder = folder
        self.writes = writes and folder is not None
        self.best_val = -1.0
        self.best_step = 0
        self._best_in_memory = None if folder is not None else trainable_state(model)

    def resume(self, optimizer, scheduler, device: torch.device) -> Resumed | None:
        """Load ``last.pt`` into the model, optimizer and scheduler, if there is one."""
        if self.folder is None or not (self.folder / LAST_FILE).exists():
            return None
        ckpt = load_resume_checkpoint(self.folder / LAST_FILE, map_location=device)
        saved = ckpt.get("data_digest")  # checkpoints of zotune 0.2 hold none
        if saved is not None and self.data is not None and saved != self.data:
            raise ConfigError(
                f"--resume: the task data is not the data the run in {self.folder} trained "
                "and was scored on (another task.data_dir, $ZOTUNE_DATA_DIR or data file); "
                "a resumed run keeps its data (start a new run to change it)"
            )
        load_trainable_state(self.model, ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        self.best_val, self.best_step = ckpt["best_val"], ckpt["best_step"]
        # Checkpoints written before zotune kept the elapsed time hold none.
        return Resumed(ckpt["step"], ckpt.get("test_accuracy_before"),
                       ckpt.get("train_seconds", 0.0))

    def consider(self, step: int, val: float) -> None:
        """Keep the model's trainable state as the best if ``val`` beats the best so far."""
        if val <= self.best_val:
            return
        self.best_val, self.best_step = val, step
        if self.folder is None:
            self._best_in_memory = trainable_state(self.model)
        elif self.writes:
            _save(self.folder / BEST_FILE, trainable_state(self.model, copy=False))

    def save_last(self, step: int, optimizer, scheduler, before: float | None,
                  train_seconds: float) -> None:
        if not self.writes:
            return
        ckpt: dict[str, Any] = {
            "trainable": trainable_state(self.model, copy=False),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "best_val": self.best_val,
            "best_step": self.best_step,
            "test_accuracy_before": before,
            "train_seconds": train_seconds,
            "data_digest": self.data,
        }
        _save(self.folder / LAST_FILE, ckpt)

    def restore_best(self, device: torch.device) -> bool:
        """Put the best state back into the model; False where this process has none to read
        (a distributed run's other processes: the main one broadcasts it)."""
        state = self._best_in_memory
        if state is None and self.writes:
            state = load_trainable_checkpoint(self.folder / BEST_FILE, map_location=device)
        if state is None:
            return False
        load_trainable_state(self.model, state)
        return True
