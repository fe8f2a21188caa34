"""A run's output folder: one process at a time, one run per folder, checked before written.

``zotune train --output-dir R`` writes ``config.yaml``, ``metrics.jsonl``, ``best.pt``,
``last.pt`` and ``result.json`` into R. Before anything is loaded or written:

* a folder that already holds a run is refused, unless ``--resume`` continues that same run
  or ``--overwrite`` replaces it (its run files are removed first);
* ``--resume`` needs a run to resume, and the same run: a setting the trajectory depends on
  (everything but :data:`MAY_CHANGE_ON_RESUME`) must equal the saved one, or the resume is
  refused naming it, so ``config.yaml`` never describes a run that did not happen;
* the folder is locked while the run trains: a second process on it stops at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig, load_config
from ..utils.files import FolderLock, atomic_write, remove_stale_temporaries

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
LOCK_FILE = ".zotune.lock"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, "best.pt", "last.pt", RESULT_FILE)

# Settings a resumed run may change: how long it runs and how it reports, where things are.
# (train.steps changes the trajectory only through a linear schedule; checked there.)
MAY_CHANGE_ON_RESUME = {
    "train.steps",
    "train.eval_every",
    "train.eval_batch_size",
    "train.output_dir",
    "train.resume",
    "train.overwrite",
    "train.progress",
    "train.save_model",
    "train.report_to",
    "train.eval_test_before",
    "task.data_dir",
}


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def trajectory_changes(saved: RunConfig, wanted: RunConfig) -> list[tuple[str, Any, Any]]:
    """``(key, saved, wanted)`` for every setting that differs and that the trajectory
    depends on."""
    before, after = saved.to_dict(), wanted.to_dict()
    changes = []
    # In the config's order (model, task, tuning, optimizer, train): a setting that implies
    # others (tuning.scheme sets ε's default) is named before what it implies.
    for section in dict.fromkeys([*before, *after]):
        keys = set(before.get(section, {})) | set(after.get(section, {}))
        for key in sorted(keys):
            dotted = f"{section}.{key}"
            old, new = before.get(section, {}).get(key), after.get(section, {}).get(key)
            if old == new:
                continue
            if dotted in MAY_CHANGE_ON_RESUME and not (
                dotted == "train.steps" and wanted.optimizer.schedule != "constant"
            ):
                continue
            changes.append((dotted, old, new))
    return changes


class RunFolder:
    """The output folder of one run (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def check(self, config: RunConfig) -> None:
        """Refuse what would lose or mix up a run; reads only, writes nothing."""
        train = config.train
        if train.resume and train.overwrite:
            raise ConfigError("train.resume and train.overwrite cannot both be set")
        if train.resume:
            if not (self.path / CONFIG_FILE).is_file():
                raise ConfigError(f"--resume: {self.path} holds no run to resume")
            from .checkpoints import LAST_FILE, checkpoint_step  # torch: only when resuming

            saved = load_config(self.path / CONFIG_FILE)
            at = checkpoint_step(self.path / LAST_FILE)
            if at is not None and train.steps < at:
                raise ConfigError(
                    f"--resume: the run in {self.path} is at step {at}, past train.steps="
                    f"{train.steps}; a resumed run only goes on (start a new run for fewer "
                    "steps)"
                )
            changes = trajectory_changes(saved, config)
            if changes:
                key, old, new = changes[0]
                raise ConfigError(
                    f"--resume: {key} is {old!r} in the run in {self.path}, not {new!r}; a "
                    "resumed run keeps its settings (start a new run to change it)"
                )
        elif holds_run(self.path) and not train.overwrite:
            raise ConfigError(
                f"{self.path} already holds a run: --resume continues it, --overwrite "
                "replaces it, or choose another --output-dir"
            )

    def lock(self) -> FolderLock:
        return FolderLock(
            self.path, LOCK_FILE, f"another zotune process is training in {self.path}"
        )

    def start(self, config: RunConfig) -> None:
        """Clear a replaced run's files and record this run's config (main process)."""
        import yaml

        remove_stale_temporaries(self.path, RUN_FILES)
        if config.train.overwrite:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        text = yaml.safe_dump(config.to_dict())
        atomic_write(self.path / CONFIG_FILE, lambda p: p.write_text(text))

    def truncate_metrics(self, step: int) -> None:
        """Drop the metrics written after the checkpoint a run resumes from: the resumed run
        writes them again."""
        path = self.path / METRICS_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if record.get("step", 0) <= step and "final" not in record:
                kept.append(line)
        text = "".join(line + "\n" for line in kept)
        atomic_write(path, lambda p: p.write_text(text))
