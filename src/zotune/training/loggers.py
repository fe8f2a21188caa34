"""Where a run's metrics go besides ``metrics.jsonl`` (which stays the record):
``train.report_to`` = ``none``, ``tensorboard`` or ``wandb``, as the Hugging Face Trainer's
``report_to``.

=================== =====================================================================
metrics.jsonl key   scalar
=================== =====================================================================
loss                train/loss (the step's loss, see :class:`zotune.training.train.MetricsLog`)
lr                  train/lr
val_accuracy        eval/val_accuracy
step_seconds        train/step_seconds
peak_memory_mb      train/peak_memory_mb
comm_bytes          train/comm_bytes (distributed runs)
=================== =====================================================================

TensorBoard goes through ``torch.utils.tensorboard`` into ``OUTPUT_DIR/tensorboard`` (or
TensorBoard's default ``runs/`` folder without an output folder); it needs the
``tensorboard`` package (``pip install 'zotune[tensorboard]'``). Weights & Biases needs
``wandb`` (``pip install 'zotune[wandb]'``); it runs offline (files under the output
folder, ``wandb sync`` uploads them) unless ``WANDB_MODE`` says otherwise or
``WANDB_API_KEY`` is set. A missing package is refused before anything is loaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..config import ConfigError

REPORTERS = ("none", "tensorboard", "wandb")
SCALARS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "val_accuracy": "eval/val_accuracy",
    "step_seconds": "train/step_seconds",
    "peak_memory_mb": "train/peak_memory_mb",
    "comm_bytes": "train/comm_bytes",
}
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_reporter(name: str) -> None:
    """Refuse an unknown reporter, or one whose package is not installed."""
    if name not in REPORTERS:
        raise ConfigError(
            f"train.report_to: unknown reporter {name!r} (choose from {', '.join(REPORTERS)})"
        )
    package = PACKAGES.get(name)
    if package is not None and not installed(package):
        raise ConfigError(
            f"train.report_to={name} needs the {package} package: pip install 'zotune[{name}]'"
        )


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The reported scalars of a metrics record, by tag."""
    return {tag: float(record[key]) for key, tag in SCALARS.items() if key in record}


class TensorBoardReporter:
    def __init__(self, folder: Path | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard") if folder else None)

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(self, folder: Path | None, config: dict[str, Any]) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline"
        )
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "zotune"),
            dir=str(folder) if folder else None,
            config=config,
            mode=mode,
        )

    def log(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.run.log(values, step=record["step"])

    def close(self) -> None:
        self.run.finish()


def open_reporter(name: str, folder: Path | None, config: dict[str, Any]):
    """The reporter ``train.report_to`` names (None for ``none``)."""
    check_reporter(name)
    if name == "tensorboard":
        return TensorBoardReporter(folder)
    if name == "wandb":
        return WandbReporter(folder, config)
    return None
